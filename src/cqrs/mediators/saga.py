"""`SagaMediator` under python-cqrs 5's path."""

from cqrs.saga.mediator import SagaMediator

__all__ = ["SagaMediator"]
