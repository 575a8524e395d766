"""The storage protocols: what a saga storage implements.

A storage implements two small protocols:

- `SagaEngineStorage`, the engine's hot path: `start_saga`, `claim_saga`,
  `checkpoint`, `renew_lease`, `release_lease`, `claim_recoverable`, `close`.
  Every write a runner makes after the start is conditional on its `Lease`
  (owner and epoch) and returns False when another runner has taken the saga
  over.
- `SagaOperatorStorage`, what operators and tools use: `get_saga`,
  `get_history`, `list_sagas`, `amend_saga`, `park_saga`, `reset_saga`,
  `purge_sagas`.

`SagaStorage` is both. The python-cqrs-shaped methods (`create_saga`,
`load_saga_state`, `get_step_history`, ...) are written once, on top of these,
in `cqrs.saga.storage.compat.PythonCqrsStorageMethods`; the storages shipped
here inherit them, and a new storage gets them the same way.
"""

from __future__ import annotations

import datetime
import typing
import uuid

from cqrs.saga.storage.enums import SagaStatus

if typing.TYPE_CHECKING:
    from cqrs.outbox.models import OutboxMessage
from cqrs.saga.storage.models import Lease, NewSaga, SagaClaim, SagaLogEntry, SagaRecord, StepEntry

__all__ = ["ISagaStorage", "SagaEngineStorage", "SagaOperatorStorage", "SagaStorage"]

JsonDict = dict[str, typing.Any]
#: One status or several: `list_sagas` filters on any of them.
StatusFilter = SagaStatus | typing.Collection[SagaStatus] | None


@typing.runtime_checkable
class SagaEngineStorage(typing.Protocol):
    """The writes and claims the engine makes while it runs sagas."""

    async def start_saga(self, saga: NewSaga, owner: str, lease_seconds: float) -> Lease | None:
        """Insert a saga owned by ``owner`` (with its ``outbox`` messages), in one commit. None if the id is taken.

        The storage may keep the JSON it is given here and in `checkpoint` (the
        context, a log entry's response) as it is: the engine hands over fresh
        dicts it never changes again. Everything a storage hands out is a copy.
        """

    async def claim_saga(self, saga_id: uuid.UUID, owner: str, lease_seconds: float) -> SagaClaim | None:
        """Take the lease of a resumable saga whose lease is free, expired or ours.

        The epoch grows by one on every grant. The claim carries the record and
        its history whether or not the lease was granted. None if no such saga
        is stored.
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
        outbox: typing.Sequence[OutboxMessage] = (),
        entries: typing.Sequence[StepEntry] = (),
    ) -> bool:
        """In one commit: append ``entry`` and then ``entries`` (in order), store ``context`` and ``status``,
        renew (or release) the lease, and insert the ``outbox`` messages (see `cqrs.outbox`).

        The engine passes ``entries`` only when one commit records several log rows (a failed saga's
        compensations, recorded together), and ``outbox`` only when there are messages.

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
    ) -> list[SagaClaim]:
        """Claim up to ``limit`` resumable sagas whose lease is free or expired, with their histories.

        Each claimed saga's epoch and recovery attempt count grow by one; sagas
        already at ``max_attempts`` are skipped. Oldest expiry first.
        """

    async def close(self) -> None:
        """Release what the storage holds (pools, engines it made). Idempotent."""


@typing.runtime_checkable
class SagaOperatorStorage(typing.Protocol):
    """Reads and repairs for operators, tools and the python-cqrs-shaped methods."""

    async def get_saga(self, saga_id: uuid.UUID) -> SagaRecord | None:
        """The stored saga, or None."""

    async def get_history(self, saga_id: uuid.UUID) -> list[SagaLogEntry] | None:
        """The saga's step history in write order; None if no such saga is stored."""

    async def list_sagas(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        older_than: datetime.timedelta | None = None,
        correlation_id: str | None = None,
        recoverable: bool = False,
        max_recovery_attempts: int | None = None,
        idle_for: datetime.timedelta | None = None,
        after: SagaRecord | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        """Sagas oldest first (by ``created_at``, then id), filtered.

        ``status``: one status or a collection. ``older_than``: created at
        least that long ago. ``recoverable``: resumable and without a live
        lease. ``max_recovery_attempts``: fewer recovery attempts than that.
        ``idle_for``: not updated for that long. ``after``: the page after
        this record (cursor pagination: pass the last record of a page).
        """

    async def amend_saga(
        self,
        saga_id: uuid.UUID,
        *,
        context: JsonDict | None = None,
        status: SagaStatus | None = None,
        error: str | None = None,
        entry: StepEntry | None = None,
        recovery_attempts: int | None = None,
        add_recovery_attempts: int = 0,
        expected_version: int | None = None,
        unleased: bool = False,
    ) -> bool:
        """An operator's write, in one commit; not fenced by a lease.

        Stores what is given (``recovery_attempts`` sets the count,
        ``add_recovery_attempts`` adds to it), appends ``entry``, and bumps the
        version when the context or status changes. With ``expected_version``
        only a saga at that version is changed; with ``unleased`` only a saga
        without a live lease. False (nothing written) when no saga matched.
        """

    async def park_saga(self, saga_id: uuid.UUID, reason: str) -> None:
        """Take the saga out of every path (status ``parked``, lease freed); `SagaNotFoundError` if unknown."""

    async def reset_saga(self, saga_id: uuid.UUID) -> None:
        """Make a parked or stuck saga recoverable again with fresh attempts; `SagaNotFoundError` if unknown."""

    async def purge_sagas(
        self,
        *,
        older_than: datetime.timedelta,
        status: SagaStatus | None = None,
        limit: int = 1000,
    ) -> int:
        """Delete up to ``limit`` finished sagas created more than ``older_than`` ago, with their histories."""


@typing.runtime_checkable
class SagaStorage(SagaEngineStorage, SagaOperatorStorage, typing.Protocol):
    """A complete storage: the engine's protocol and the operator's."""


#: The python-cqrs name of the protocol (the python-cqrs-shaped methods come with every storage here).
ISagaStorage = SagaStorage
