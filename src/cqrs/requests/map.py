"""`SagaMap` under python-cqrs 4's path."""

from cqrs.saga.map import SagaMap

__all__ = ["SagaMap"]
