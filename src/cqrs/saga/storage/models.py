"""What storages hand back: saga records, step log entries and leases.

The types written once per step (`StepEntry`, `NewSaga`, `SagaLogEntry`) are
slotted, not frozen: a frozen dataclass's ``__init__`` costs about three times
as much, and these are built on every checkpoint. Storages copy what they keep.
"""

from __future__ import annotations

import dataclasses
import datetime
import typing
import uuid

from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus

if typing.TYPE_CHECKING:
    from cqrs.outbox.models import OutboxMessage

__all__ = ["Lease", "NewSaga", "SagaClaim", "SagaLogEntry", "SagaRecord", "StepEntry"]

JsonDict = dict[str, typing.Any]


@dataclasses.dataclass(frozen=True)
class Lease:
    """Proof of ownership of a saga: every write a runner makes is conditional on it."""

    owner: str
    epoch: int


@dataclasses.dataclass(slots=True)
class SagaLogEntry:
    """One row of a saga's step history, in the order it was written (``seq``)."""

    saga_id: uuid.UUID
    step_name: str
    action: typing.Literal["act", "compensate"]
    status: SagaStepStatus
    timestamp: datetime.datetime
    details: str | None = None
    response: JsonDict | None = None
    seq: int = 0


@dataclasses.dataclass(frozen=True)
class SagaRecord:
    """A stored saga, as operators and the engine read it."""

    saga_id: uuid.UUID
    name: str
    status: SagaStatus
    context: JsonDict
    version: int
    definition_version: int = 1
    correlation_id: str | None = None
    owner: str | None = None
    lease_epoch: int = 0
    lease_expires_at: datetime.datetime | None = None
    recovery_attempts: int = 0
    error: str | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    trace_context: dict[str, str] | None = None


@dataclasses.dataclass(slots=True)
class NewSaga:
    """A saga to insert: the first checkpoint of a run."""

    saga_id: uuid.UUID
    name: str
    context: JsonDict
    definition_version: int = 1
    correlation_id: str | None = None
    status: SagaStatus = SagaStatus.RUNNING
    trace_context: dict[str, str] | None = None
    #: Outbox messages inserted in the same commit as the saga (events its start carries).
    outbox: typing.Sequence[OutboxMessage] = ()


@dataclasses.dataclass(slots=True)
class StepEntry:
    """A step log row the engine writes with a checkpoint."""

    step_name: str
    action: typing.Literal["act", "compensate"]
    status: SagaStepStatus
    details: str | None = None
    response: JsonDict | None = None


@dataclasses.dataclass(frozen=True)
class SagaClaim:
    """The answer to a claim: the record, its history, and the lease if it was granted.

    ``lease`` is None when the saga is final (nothing to run) or another
    runner's lease on it has not expired (``busy``).
    """

    record: SagaRecord
    history: list[SagaLogEntry]
    lease: Lease | None
    busy: bool = False
