"""An in-memory saga storage: the protocol's twin, for tests, demos and single processes.

(Just over 500 lines: it implements every method of the engine, operator and outbox protocols, each
as the SQL storage behaves.)

It keeps its own deep copies of everything it is given and hands out copies,
so callers cannot change stored state behind its back. ``clock`` lets tests
move time (lease expiry, ages) without sleeping.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import typing
import uuid

from cqrs.outbox.memory import MemoryOutbox
from cqrs.outbox.models import OutboxMessage, OutboxRecord, OutboxStatus
from cqrs.saga.exceptions import SagaNotFoundError
from cqrs.saga.storage.compat import PythonCqrsStorageMethods
from cqrs.saga.storage.enums import RESUMABLE, SagaStatus, SagaStepStatus, purge_filter, status_set
from cqrs.saga.storage.models import Lease, NewSaga, SagaClaim, SagaLogEntry, SagaRecord, StepEntry

if typing.TYPE_CHECKING:
    from cqrs.saga.storage.protocol import StatusFilter

__all__ = ["MemorySagaStorage"]

JsonDict = dict[str, typing.Any]


# A C-level callable: the clock is read on every write.
_utcnow: typing.Callable[[], datetime.datetime] = functools.partial(datetime.datetime.now, datetime.timezone.utc)


@functools.lru_cache(maxsize=64)
def _seconds(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


_ATOMS = frozenset({str, int, float, bool, type(None)})


def _json_copy(value: typing.Any) -> typing.Any:
    """A deep copy of JSON-shaped data (many times faster than `copy.deepcopy` on it)."""
    kind = type(value)
    if kind is dict:
        return {key: item if type(item) in _ATOMS else _json_copy(item) for key, item in value.items()}
    if kind is list:
        return [item if type(item) in _ATOMS else _json_copy(item) for item in value]
    if kind in _ATOMS:
        return value
    return copy.deepcopy(value)


class _StoredSaga:
    """A stored saga: the mutable twin of `SagaRecord` (updating in place is the cheap path)."""

    __slots__ = (*(field.name for field in dataclasses.fields(SagaRecord)), "log")

    def __init__(
        self,
        saga_id: uuid.UUID,
        name: str,
        status: SagaStatus,
        context: JsonDict,
        version: int,
        definition_version: int = 1,
        correlation_id: str | None = None,
        owner: str | None = None,
        lease_epoch: int = 0,
        lease_expires_at: datetime.datetime | None = None,
        recovery_attempts: int = 0,
        error: str | None = None,
        created_at: datetime.datetime | None = None,
        updated_at: datetime.datetime | None = None,
        trace_context: dict[str, str] | None = None,
    ) -> None:
        self.saga_id = saga_id
        self.name = name
        self.status = status
        self.context = context
        self.version = version
        self.definition_version = definition_version
        self.correlation_id = correlation_id
        self.owner = owner
        self.lease_epoch = lease_epoch
        self.lease_expires_at = lease_expires_at
        self.recovery_attempts = recovery_attempts
        self.error = error
        self.created_at = created_at
        self.updated_at = updated_at
        self.trace_context = trace_context
        self.log: list[SagaLogEntry] = []  # its step history, in write order

    # python-cqrs's memory storage kept each saga as a dict; code that edits one by key keeps working.
    def __getitem__(self, field: str) -> typing.Any:
        if field not in _FIELDS:
            raise KeyError(field)
        return getattr(self, field)

    def __setitem__(self, field: str, value: typing.Any) -> None:
        if field not in _FIELDS:
            raise KeyError(f"{field!r} is not a stored saga field; fields: {', '.join(sorted(_FIELDS))}")
        setattr(self, field, value)

    def record(self) -> SagaRecord:
        """A frozen copy for a caller (with its own copy of the context)."""
        return SagaRecord(
            self.saga_id,
            self.name,
            self.status,
            _json_copy(self.context),
            self.version,
            self.definition_version,
            self.correlation_id,
            self.owner,
            self.lease_epoch,
            self.lease_expires_at,
            self.recovery_attempts,
            self.error,
            self.created_at,
            self.updated_at,
            dict(self.trace_context) if self.trace_context else None,
        )


_FIELDS = frozenset(_StoredSaga.__slots__) - {"log"}


def _order_key(record: _StoredSaga | SagaRecord) -> tuple[datetime.datetime, int]:
    """Listing order: oldest first, ties broken by id (as the SQL storage orders them)."""
    created = record.created_at or datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    return created, record.saga_id.int


class MemorySagaStorage(PythonCqrsStorageMethods):
    """Keeps sagas in a dict; every method behaves as the SQL storage does.

    ``_sagas`` maps saga ids to their stored rows. A row reads and writes its
    fields as items too (``storage._sagas[saga_id]["updated_at"] = ...``), as
    code written for python-cqrs's memory storage does in tests.
    """

    def __init__(self, clock: typing.Callable[[], datetime.datetime] = _utcnow) -> None:
        self._clock = clock
        self._sagas: dict[uuid.UUID, _StoredSaga] = {}
        self._outbox = MemoryOutbox(clock, _json_copy)
        self._seq = 0

    # -- helpers ---------------------------------------------------------------

    def _get(self, saga_id: uuid.UUID) -> _StoredSaga:
        record = self._sagas.get(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        return record

    def _put(self, record: _StoredSaga, **changes: typing.Any) -> _StoredSaga:
        for name, value in changes.items():
            setattr(record, name, value)
        record.updated_at = self._clock()
        return record

    def _log_row(
        self, saga_id: uuid.UUID, entry: StepEntry, now: datetime.datetime | None = None, *, owned: bool = False
    ) -> SagaLogEntry:
        """The row ``entry`` becomes, not yet appended: building it may fail.

        ``owned``: the caller gave up the response (the engine's writes), so it is kept, not copied.
        """
        return SagaLogEntry(
            saga_id,
            entry.step_name,
            entry.action,
            entry.status if type(entry.status) is SagaStepStatus else SagaStepStatus(entry.status),
            now or self._clock(),
            entry.details,
            entry.response if owned else _json_copy(entry.response),
            self._seq + 1,
        )

    def _log_rows(
        self, saga_id: uuid.UUID, entries: typing.Sequence[StepEntry], now: datetime.datetime,
        *, after: SagaLogEntry | None,
    ) -> list[SagaLogEntry]:
        """The rows of ``entries``, numbered after ``after`` (or the last row), not yet appended."""
        first = (after.seq if after is not None else self._seq) + 1
        rows = [self._log_row(saga_id, entry, now, owned=True) for entry in entries]
        for offset, row in enumerate(rows):
            row.seq = first + offset
        return rows

    def _append(self, record: _StoredSaga, row: SagaLogEntry) -> None:
        self._seq = row.seq
        record.log.append(row)

    def _holds(self, record: _StoredSaga, lease: Lease) -> bool:
        return record.owner == lease.owner and record.lease_epoch == lease.epoch

    @staticmethod
    def _leased(record: _StoredSaga, now: datetime.datetime) -> bool:
        """Whether someone holds a live lease on the saga."""
        return record.owner is not None and record.lease_expires_at is not None and record.lease_expires_at > now

    def _lease_free(self, record: _StoredSaga, owner: str) -> bool:
        return (
            record.owner is None
            or record.owner == owner
            or record.lease_expires_at is None
            or record.lease_expires_at <= self._clock()
        )

    def _expiry(self, lease_seconds: float) -> datetime.datetime:
        return self._clock() + _seconds(lease_seconds)

    @staticmethod
    def _copy(record: _StoredSaga) -> SagaRecord:
        return record.record()

    def _copy_history(self, saga_id: uuid.UUID) -> list[SagaLogEntry]:
        return [
            SagaLogEntry(
                e.saga_id, e.step_name, e.action, e.status, e.timestamp, e.details, _json_copy(e.response), e.seq
            )
            for e in self._sagas[saga_id].log
        ]

    # -- engine ------------------------------------------------------------------

    async def start_saga(self, saga: NewSaga, owner: str, lease_seconds: float) -> Lease | None:
        if saga.saga_id in self._sagas:
            return None
        messages = self._outbox.prepared(saga.saga_id, saga.outbox) if saga.outbox else None
        now = self._clock()
        self._sagas[saga.saga_id] = _StoredSaga(
            saga_id=saga.saga_id,
            name=saga.name,
            status=SagaStatus(saga.status),
            context=saga.context,  # the caller's fresh dict (see the protocol): kept as it is
            version=1,
            definition_version=saga.definition_version,
            correlation_id=saga.correlation_id,
            trace_context=dict(saga.trace_context) if saga.trace_context else None,
            owner=owner,
            lease_epoch=1,
            lease_expires_at=now + _seconds(lease_seconds),
            created_at=now,
            updated_at=now,
        )
        if messages:
            self._outbox.store(messages)
        return Lease(owner=owner, epoch=1)

    async def claim_saga(self, saga_id: uuid.UUID, owner: str, lease_seconds: float) -> SagaClaim | None:
        record = self._sagas.get(saga_id)
        if record is None:
            return None
        lease: Lease | None = None
        busy = False
        if record.status in RESUMABLE:
            if self._lease_free(record, owner):
                record = self._put(
                    record,
                    owner=owner,
                    lease_epoch=record.lease_epoch + 1,
                    lease_expires_at=self._expiry(lease_seconds),
                    status=SagaStatus.RUNNING if record.status == SagaStatus.PENDING else record.status,
                )
                lease = Lease(owner=owner, epoch=record.lease_epoch)
            else:
                busy = True
        return SagaClaim(
            record=self._copy(record), history=self._copy_history(saga_id), lease=lease, busy=busy
        )

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
        record = self._sagas.get(saga_id)
        if record is None or record.owner != lease.owner or record.lease_epoch != lease.epoch:
            return False
        # Everything that may fail comes first: a checkpoint is all or nothing.
        now = self._clock()
        row = self._log_row(saga_id, entry, now, owned=True) if entry is not None else None
        more = self._log_rows(saga_id, entries, now, after=row) if entries else None
        messages = self._outbox.prepared(saga_id, outbox) if outbox else None
        if status is not None and type(status) is not SagaStatus:
            status = SagaStatus(status)
        # From here on nothing can fail. The context is the engine's own fresh dict (see the
        # protocol): kept as it is.
        record.version += 1
        if context is not None:
            record.context = context
        if status is not None:
            record.status = status
        if error is not None:
            record.error = error
        if release:
            record.owner = None
            record.lease_expires_at = None
        else:
            record.lease_expires_at = now + _seconds(lease_seconds)
        record.updated_at = now
        if row is not None:
            self._seq = row.seq
            record.log.append(row)
        if more:
            self._seq = more[-1].seq
            record.log.extend(more)
        if messages:
            self._outbox.store(messages)
        return True

    async def renew_lease(self, saga_id: uuid.UUID, lease: Lease, lease_seconds: float) -> bool:
        record = self._sagas.get(saga_id)
        if record is None or not self._holds(record, lease):
            return False
        self._put(record, lease_expires_at=self._expiry(lease_seconds))
        return True

    async def release_lease(self, saga_id: uuid.UUID, lease: Lease) -> bool:
        record = self._sagas.get(saga_id)
        if record is None or not self._holds(record, lease):
            return False
        self._put(record, owner=None, lease_expires_at=None)
        return True

    async def claim_recoverable(
        self,
        owner: str,
        lease_seconds: float,
        *,
        limit: int,
        names: typing.Collection[str] | None = None,
        max_attempts: int | None = None,
    ) -> list[SagaClaim]:
        now = self._clock()
        claimed: list[SagaClaim] = []
        candidates = sorted(
            (
                r
                for r in self._sagas.values()
                if r.status in RESUMABLE
                and not self._leased(r, now)
                and (names is None or r.name in names)
                and (max_attempts is None or r.recovery_attempts < max_attempts)
            ),
            key=lambda r: (r.lease_expires_at or now, r.created_at or now),
        )
        for record in candidates[: max(limit, 0)]:
            updated = self._put(
                record,
                owner=owner,
                lease_epoch=record.lease_epoch + 1,
                lease_expires_at=self._expiry(lease_seconds),
                recovery_attempts=record.recovery_attempts + 1,
                status=SagaStatus.RUNNING if record.status == SagaStatus.PENDING else record.status,
            )
            claimed.append(
                SagaClaim(
                    record=self._copy(updated),
                    history=self._copy_history(record.saga_id),
                    lease=Lease(owner=owner, epoch=updated.lease_epoch),
                )
            )
        return claimed

    # -- operators -------------------------------------------------------------------------

    async def get_saga(self, saga_id: uuid.UUID) -> SagaRecord | None:
        record = self._sagas.get(saga_id)
        return self._copy(record) if record is not None else None

    async def get_history(self, saga_id: uuid.UUID) -> list[SagaLogEntry] | None:
        if saga_id not in self._sagas:
            return None
        return self._copy_history(saga_id)

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
        now = self._clock()
        statuses = status_set(status)
        cursor = _order_key(after) if after is not None else None
        found = [
            r
            for r in self._sagas.values()
            if (statuses is None or r.status in statuses)
            and (name is None or r.name == name)
            and (older_than is None or (r.created_at or now) <= now - older_than)
            and (correlation_id is None or r.correlation_id == correlation_id)
            and (not recoverable or (r.status in RESUMABLE and not self._leased(r, now)))
            and (max_recovery_attempts is None or r.recovery_attempts < max_recovery_attempts)
            and (idle_for is None or (r.updated_at or now) <= now - idle_for)
            and (cursor is None or _order_key(r) > cursor)
        ]
        found.sort(key=_order_key)
        return [self._copy(r) for r in found[: max(limit, 0)]]

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
        record = self._sagas.get(saga_id)
        if record is None or (expected_version is not None and record.version != expected_version):
            return False
        now = self._clock()
        if unleased and self._leased(record, now):
            return False
        # What may fail (copies) comes first: an amendment is all or nothing.
        row = self._log_row(saga_id, entry, now) if entry is not None else None
        stored_context = _json_copy(context) if context is not None else None
        if stored_context is not None or status is not None:
            record.version += 1
        if stored_context is not None:
            record.context = stored_context
        if status is not None:
            record.status = SagaStatus(status)
        if error is not None:
            record.error = error
        if recovery_attempts is not None:
            record.recovery_attempts = recovery_attempts
        record.recovery_attempts += add_recovery_attempts
        record.updated_at = now
        if row is not None:
            self._append(record, row)
        return True

    async def park_saga(self, saga_id: uuid.UUID, reason: str) -> None:
        record = self._get(saga_id)
        self._put(record, status=SagaStatus.PARKED, error=reason, owner=None, lease_expires_at=None)

    async def reset_saga(self, saga_id: uuid.UUID) -> None:
        record = self._get(saga_id)
        compensating = any(
            e.action == "compensate" or e.status == SagaStepStatus.FAILED for e in record.log
        )
        self._put(
            record,
            status=SagaStatus.COMPENSATING if compensating else SagaStatus.RUNNING,
            recovery_attempts=0,
            owner=None,
            lease_expires_at=None,
        )

    async def purge_sagas(
        self,
        *,
        older_than: datetime.timedelta,
        status: SagaStatus | None = None,
        limit: int = 1000,
    ) -> int:
        statuses = purge_filter(older_than, status)
        now = self._clock()
        found = [
            r
            for r in self._sagas.values()
            if r.status in statuses and r.owner is None and (r.created_at or now) <= now - older_than
        ]
        found.sort(key=lambda r: r.created_at or now)
        doomed = found[: max(limit, 0)]
        for record in doomed:
            del self._sagas[record.saga_id]
            self._outbox.forget_saga(record.saga_id)
        return len(doomed)

    # -- the outbox (cqrs.outbox.OutboxStorage) ---------------------------------------------

    async def claim_outbox(self, owner: str, lease_seconds: float, *, limit: int) -> list[OutboxRecord]:
        return self._outbox.claim(owner, lease_seconds, limit)

    async def mark_published(self, owner: str, seqs: typing.Collection[int]) -> int:
        return self._outbox.mark_published(owner, seqs)

    async def mark_failed(self, owner: str, seq: int, error: str, *, retry_in: float | None) -> bool:
        return self._outbox.mark_failed(owner, seq, error, retry_in)

    async def outbox_backlog(self) -> int:
        return self._outbox.backlog()

    async def list_outbox(
        self, *, status: OutboxStatus | None = None, saga_id: uuid.UUID | None = None, limit: int = 100
    ) -> list[OutboxRecord]:
        return self._outbox.list(status, saga_id, limit)

    async def requeue_outbox(self, message_id: uuid.UUID) -> bool:
        return self._outbox.requeue(message_id)

    async def purge_outbox(self, *, older_than: datetime.timedelta, limit: int = 1000) -> int:
        return self._outbox.purge(older_than, limit)

    async def close(self) -> None:
        return None
