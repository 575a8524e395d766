"""Saga storages: the protocol, an in-memory twin and SQLAlchemy (in `.sqlalchemy`)."""

from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import Lease, SagaLogEntry, SagaRecord
from cqrs.saga.storage.protocol import ISagaStorage, SagaStorage

__all__ = ["ISagaStorage", "Lease", "SagaLogEntry", "SagaRecord", "SagaStatus", "SagaStepStatus", "SagaStorage"]
