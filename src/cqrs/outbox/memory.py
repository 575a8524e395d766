"""The in-memory outbox: the rows `MemorySagaStorage` writes with its checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import typing
import uuid

from cqrs.outbox.models import OutboxMessage, OutboxRecord, OutboxStatus

__all__ = ["MemoryOutbox"]


@dataclasses.dataclass(slots=True)
class _Row:
    seq: int
    saga_id: uuid.UUID
    message: OutboxMessage
    created_at: datetime.datetime
    status: OutboxStatus = OutboxStatus.PENDING
    attempts: int = 0
    error: str | None = None
    published_at: datetime.datetime | None = None
    next_attempt_at: datetime.datetime | None = None
    owner: str | None = None
    lease_expires_at: datetime.datetime | None = None

    def record(self, copy_json: typing.Callable[[typing.Any], typing.Any]) -> OutboxRecord:
        m = self.message
        return OutboxRecord(
            self.seq, m.message_id, self.saga_id, m.topic, m.name, copy_json(m.payload), dict(m.headers),
            self.status, self.attempts, self.error, self.created_at, self.published_at, self.next_attempt_at,
            self.owner, self.lease_expires_at,
        )


class MemoryOutbox:
    """Outbox rows kept in order, with the claims, marks and listing of `cqrs.outbox.OutboxStorage`."""

    def __init__(
        self,
        clock: typing.Callable[[], datetime.datetime],
        copy_json: typing.Callable[[typing.Any], typing.Any] = copy.deepcopy,
    ) -> None:
        self._clock = clock
        self._copy = copy_json  # how payloads are copied in and out (the storage's JSON copy)
        self._rows: dict[int, _Row] = {}
        self._ids: dict[uuid.UUID, int] = {}  # message id -> seq (the SQL table's unique index)
        self._seq = 0

    def prepared(self, saga_id: uuid.UUID, messages: typing.Sequence[OutboxMessage]) -> list[_Row]:
        """Copies of ``messages`` as rows, not yet stored (the caller stores them once nothing can fail).

        A message id already stored (or twice among ``messages``) raises ``ValueError``, as the SQL
        storage's unique index fails the commit.
        """
        ids = [message.message_id for message in messages]
        if len(set(ids)) != len(ids) or any(i in self._ids for i in ids):
            raise ValueError(f"An outbox message id is already stored: {ids}")
        now = self._clock()
        rows = []
        for offset, message in enumerate(messages, start=1):
            stored = OutboxMessage(
                message.message_id, message.topic, message.name, self._copy(message.payload), dict(message.headers)
            )
            rows.append(_Row(self._seq + offset, saga_id, stored, now))
        return rows

    def store(self, rows: list[_Row]) -> None:
        for row in rows:
            self._rows[row.seq] = row
            self._ids[row.message.message_id] = row.seq
            self._seq = row.seq

    def _delete(self, seq: int) -> None:
        row = self._rows.pop(seq)
        del self._ids[row.message.message_id]

    def forget_saga(self, saga_id: uuid.UUID) -> None:
        """Drop a purged saga's published rows."""
        for seq in [s for s, r in self._rows.items() if r.saga_id == saga_id and r.status is OutboxStatus.PUBLISHED]:
            self._delete(seq)

    def claim(self, owner: str, lease_seconds: float, limit: int) -> list[OutboxRecord]:
        now = self._clock()
        blocked: set[uuid.UUID] = set()
        claimed: list[OutboxRecord] = []
        for row in self._rows.values():  # in seq order: rows are stored with growing seqs
            if len(claimed) >= limit:
                break
            if row.status is OutboxStatus.PUBLISHED or row.saga_id in blocked:
                continue
            blocked.add(row.saga_id)  # later rows of this saga wait for this one
            if row.status is not OutboxStatus.PENDING:
                continue
            if row.next_attempt_at is not None and row.next_attempt_at > now:
                continue
            if row.owner is not None and row.lease_expires_at is not None and row.lease_expires_at > now:
                continue
            row.owner = owner
            row.lease_expires_at = now + datetime.timedelta(seconds=lease_seconds)
            claimed.append(row.record(self._copy))
        return claimed

    def mark_published(self, owner: str, seqs: typing.Collection[int]) -> int:
        now = self._clock()
        marked = 0
        for seq in seqs:
            row = self._rows.get(seq)
            if row is not None and row.owner == owner and row.status is OutboxStatus.PENDING:
                row.status, row.published_at, row.owner, row.lease_expires_at = OutboxStatus.PUBLISHED, now, None, None
                marked += 1
        return marked

    def mark_failed(self, owner: str, seq: int, error: str, retry_in: float | None) -> bool:
        row = self._rows.get(seq)
        if row is None or row.owner != owner or row.status is not OutboxStatus.PENDING:
            return False
        row.attempts += 1
        row.error = error
        row.owner = row.lease_expires_at = None
        if retry_in is None:
            row.status = OutboxStatus.PARKED
        else:
            row.next_attempt_at = self._clock() + datetime.timedelta(seconds=retry_in)
        return True

    def backlog(self) -> int:
        return sum(1 for r in self._rows.values() if r.status is OutboxStatus.PENDING)

    def list(self, status: OutboxStatus | None, saga_id: uuid.UUID | None, limit: int) -> list[OutboxRecord]:
        found = [
            r.record(self._copy)
            for seq, r in sorted(self._rows.items())
            if (status is None or r.status is OutboxStatus(status)) and (saga_id is None or r.saga_id == saga_id)
        ]
        return found[: max(limit, 0)]

    def requeue(self, message_id: uuid.UUID) -> bool:
        seq = self._ids.get(message_id)
        row = self._rows[seq] if seq is not None else None
        if row is None or row.status is OutboxStatus.PUBLISHED:
            return False
        # A relay that holds the row keeps its claim (and marks it as usual).
        row.status, row.attempts, row.next_attempt_at = OutboxStatus.PENDING, 0, None
        return True

    def purge(self, older_than: datetime.timedelta, limit: int) -> int:
        if older_than < datetime.timedelta(0):
            raise ValueError(f"purge_outbox(older_than=...) must not be negative, got {older_than}")
        cutoff = self._clock() - older_than
        doomed = sorted(
            (r.published_at, seq) for seq, r in self._rows.items()
            if r.status is OutboxStatus.PUBLISHED and r.published_at is not None and r.published_at <= cutoff
        )[: max(limit, 0)]
        for _, seq in doomed:
            self._delete(seq)
        return len(doomed)
