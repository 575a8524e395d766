"""The storage protocol every saga storage implements.

Two groups of methods:

- The engine's: `start_saga`, `claim_saga`, `checkpoint`, `renew_lease`,
  `release_lease`, `claim_recoverable`. Every write a runner makes after the
  start is conditional on its `Lease` (owner and epoch) and returns False when
  another runner has taken the saga over.
- The python-cqrs-shaped ones (`create_saga`, `load_saga_state`,
  `get_step_history`, `get_sagas_for_recovery`, ...) and operator tools
  (`list_sagas`, `park_saga`, `reset_saga`).
"""

from __future__ import annotations

import datetime
import typing
import uuid

from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import Lease, NewSaga, SagaClaim, SagaLogEntry, SagaRecord, StepEntry

__all__ = ["ISagaStorage", "SagaStorage"]

JsonDict = dict[str, typing.Any]


@typing.runtime_checkable
class SagaStorage(typing.Protocol):
    """Where sagas, their contexts and step histories are kept."""

    # -- the engine's hot path -------------------------------------------------

    async def start_saga(self, saga: NewSaga, owner: str, lease_seconds: float) -> Lease | None:
        """Insert a saga owned by ``owner``, in one commit. None if the id is taken."""

    async def claim_saga(self, saga_id: uuid.UUID, owner: str, lease_seconds: float) -> SagaClaim | None:
        """Take the lease of a resumable saga whose lease is free, expired or ours.

        The epoch grows by one on every grant. None if no such saga is stored.
        """

    async def checkpoint(
        self,
        saga_id: uuid.UUID,
        lease: Lease,
        *,
        entry: StepEntry | None,
        context: JsonDict | None = None,
        status: SagaStatus | None = None,
        error: str | None = None,
        lease_seconds: float,
        release: bool = False,
    ) -> bool:
        """In one commit: append ``entry``, store ``context`` and ``status``, renew (or release) the lease.

        Writes nothing and returns False if ``lease`` is no longer the saga's.
        """

    async def renew_lease(self, saga_id: uuid.UUID, lease: Lease, lease_seconds: float) -> bool:
        """Push the lease expiry forward; False if the lease was lost."""

    async def release_lease(self, saga_id: uuid.UUID, lease: Lease) -> bool:
        """Give the lease up so another runner may claim the saga at once."""

    async def claim_recoverable(
        self,
        owner: str,
        lease_seconds: float,
        *,
        limit: int,
        names: typing.Collection[str] | None = None,
        max_attempts: int | None = None,
    ) -> list[SagaRecord]:
        """Claim up to ``limit`` resumable sagas whose lease is free or expired.

        Each claimed saga's epoch and recovery attempt count grow by one; sagas
        already at ``max_attempts`` are skipped.
        """

    # -- python-cqrs-shaped API ----------------------------------------------------

    async def create_saga(
        self, saga_id: uuid.UUID, name: str, context: JsonDict, *, correlation_id: str | None = None
    ) -> None: ...

    async def update_context(
        self, saga_id: uuid.UUID, context: JsonDict, current_version: int | None = None
    ) -> None: ...

    async def update_status(self, saga_id: uuid.UUID, status: SagaStatus) -> None: ...

    async def log_step(
        self,
        saga_id: uuid.UUID,
        step_name: str,
        action: typing.Literal["act", "compensate"],
        status: SagaStepStatus,
        details: str | None = None,
    ) -> None: ...

    async def load_saga_state(
        self, saga_id: uuid.UUID, *, read_for_update: bool = False
    ) -> tuple[SagaStatus, JsonDict, int]: ...

    async def get_step_history(self, saga_id: uuid.UUID) -> list[SagaLogEntry]: ...

    async def get_sagas_for_recovery(
        self,
        limit: int,
        max_recovery_attempts: int = 5,
        stale_after_seconds: float | None = None,
        saga_name: str | None = None,
    ) -> list[uuid.UUID]: ...

    async def increment_recovery_attempts(
        self, saga_id: uuid.UUID, new_status: SagaStatus | None = None
    ) -> None: ...

    async def set_recovery_attempts(self, saga_id: uuid.UUID, attempts: int) -> None: ...

    # -- operators ---------------------------------------------------------------------

    async def get_saga(self, saga_id: uuid.UUID) -> SagaRecord | None: ...

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        name: str | None = None,
        older_than: datetime.timedelta | None = None,
        correlation_id: str | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]: ...

    async def park_saga(self, saga_id: uuid.UUID, reason: str) -> None: ...

    async def reset_saga(self, saga_id: uuid.UUID) -> None: ...

    async def purge_sagas(
        self,
        *,
        older_than: datetime.timedelta,
        status: SagaStatus | None = None,
        limit: int = 1000,
    ) -> int: ...

    async def close(self) -> None: ...


#: The python-cqrs name of the protocol.
ISagaStorage = SagaStorage
