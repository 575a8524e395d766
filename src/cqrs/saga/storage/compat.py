"""The python-cqrs-shaped storage methods, written once over the two storage protocols.

python-cqrs users (and their tests) call `create_saga`, `update_context`,
`log_step`, `load_saga_state`, `get_step_history`, `get_sagas_for_recovery`
and friends on a storage. Every storage shipped here inherits them from
`PythonCqrsStorageMethods`; a storage of your own gets them the same way, by
inheriting it next to implementing `SagaEngineStorage` and
`SagaOperatorStorage`. The engine never calls them.
"""

from __future__ import annotations

import copy
import datetime
import typing
import uuid

from cqrs.saga.exceptions import SagaConcurrencyError, SagaNotFoundError
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import NewSaga, SagaLogEntry, StepEntry

if typing.TYPE_CHECKING:
    from cqrs.saga.storage.protocol import SagaStorage

__all__ = ["PythonCqrsStorageMethods"]

JsonDict = dict[str, typing.Any]
#: The owner a `create_saga` insert is made under for the instant before its lease is released.
_CREATOR = "create_saga"


class PythonCqrsStorageMethods:
    """python-cqrs's `ISagaStorage` methods, on top of the engine and operator protocols."""

    async def create_saga(
        self, saga_id: uuid.UUID, name: str, context: JsonDict, *, correlation_id: str | None = None
    ) -> None:
        """Store a new ``pending`` saga without an owner; ``ValueError`` if the id is taken."""
        storage = _storage(self)
        # A copy: `start_saga` may keep what it is given, and this caller may change its dict afterwards.
        new = NewSaga(saga_id, name, copy.deepcopy(context), correlation_id=correlation_id, status=SagaStatus.PENDING)
        lease = await storage.start_saga(new, _CREATOR, 0.0)
        if lease is None:
            raise ValueError(f"A saga with id {saga_id} is already stored")
        await storage.release_lease(saga_id, lease)

    async def update_context(
        self, saga_id: uuid.UUID, context: JsonDict, current_version: int | None = None
    ) -> None:
        """Store ``context`` (bumping the version).

        With ``current_version``, only if the saga is still at that version;
        otherwise `SagaConcurrencyError`.
        """
        storage = _storage(self)
        if await storage.amend_saga(saga_id, context=context, expected_version=current_version):
            return
        record = await storage.get_saga(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        raise SagaConcurrencyError(
            f"Saga {saga_id} is at version {record.version}, not {current_version}: "
            "another writer changed it since it was read"
        )

    async def update_status(self, saga_id: uuid.UUID, status: SagaStatus) -> None:
        """Set the status (bumping the version)."""
        await self._amend(saga_id, status=SagaStatus(status))

    async def log_step(
        self,
        saga_id: uuid.UUID,
        step_name: str,
        action: typing.Literal["act", "compensate"],
        status: SagaStepStatus,
        details: str | None = None,
    ) -> None:
        """Append a row to the saga's step history."""
        await self._amend(saga_id, entry=StepEntry(step_name, action, SagaStepStatus(status), details))

    async def load_saga_state(
        self, saga_id: uuid.UUID, *, read_for_update: bool = False
    ) -> tuple[SagaStatus, JsonDict, int]:
        """``(status, context, version)``; `SagaNotFoundError` (a ``ValueError``) if unknown.

        ``read_for_update`` is accepted for python-cqrs compatibility: writes
        here are fenced by leases and versions, not by row locks held across calls.
        """
        record = await _storage(self).get_saga(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        return record.status, record.context, record.version

    async def get_step_history(self, saga_id: uuid.UUID) -> list[SagaLogEntry]:
        """The saga's step history in write order; ``[]`` for an unknown id (as python-cqrs)."""
        return await _storage(self).get_history(saga_id) or []

    async def get_sagas_for_recovery(
        self,
        limit: int,
        max_recovery_attempts: int = 5,
        stale_after_seconds: float | None = None,
        saga_name: str | None = None,
    ) -> list[uuid.UUID]:
        """Ids of resumable sagas without a live lease, with fewer attempts than the limit.

        ``stale_after_seconds``: only sagas not updated for that long.
        """
        records = await _storage(self).list_sagas(
            name=saga_name,
            recoverable=True,
            max_recovery_attempts=max_recovery_attempts,
            idle_for=datetime.timedelta(seconds=stale_after_seconds) if stale_after_seconds is not None else None,
            limit=max(limit, 0),
        )
        return [record.saga_id for record in records]

    async def increment_recovery_attempts(self, saga_id: uuid.UUID, new_status: SagaStatus | None = None) -> None:
        """Count one more recovery attempt (and set ``new_status`` if given)."""
        await self._amend(
            saga_id, add_recovery_attempts=1, status=SagaStatus(new_status) if new_status is not None else None
        )

    async def set_recovery_attempts(self, saga_id: uuid.UUID, attempts: int) -> None:
        """Set the recovery attempt count."""
        await self._amend(saga_id, recovery_attempts=attempts)

    async def _amend(self, saga_id: uuid.UUID, **changes: typing.Any) -> None:
        if not await _storage(self).amend_saga(saga_id, **changes):
            raise SagaNotFoundError(saga_id)


def _storage(methods: PythonCqrsStorageMethods) -> SagaStorage:
    return typing.cast("SagaStorage", methods)
