"""`SagaMap` under python-cqrs 5's path."""

from cqrs.saga.map import SagaMap

__all__ = ["SagaMap"]
