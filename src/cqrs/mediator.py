"""`SagaMediator` under python-cqrs 4's path (`cqrs.mediator`)."""

from cqrs.saga.mediator import SagaMediator

__all__ = ["SagaMediator"]
