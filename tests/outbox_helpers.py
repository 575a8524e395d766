"""Shared pieces of the outbox tests: storages of each kind, moving their time, messages and rows.

Nothing sleeps: time moves through `advance` (the memory storage's fake
clock; on SQL every stored timestamp of the saga and outbox tables is shifted
back, which is the same thing to a storage that reads the database clock).
"""

from __future__ import annotations

import typing
import uuid

import sqlalchemy as sa

from cqrs.outbox.models import OutboxMessage, OutboxRecord, OutboxStatus
from cqrs.saga.storage.enums import SagaStepStatus
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.saga.storage.models import Lease, NewSaga, StepEntry
from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage
from cqrs.saga.storage.sqlalchemy._outbox_schema import saga_outbox
from cqrs.saga.storage.sqlalchemy._schema import family
from saga.helpers import FakeClock

Storage = MemorySagaStorage | SqlAlchemySagaStorage
LEASE = 30.0
_SHIFTED = {
    "saga_executions": ("created_at", "updated_at", "lease_expires_at"),
    "saga_log": ("created_at",),
    "saga_outbox": ("created_at", "published_at", "next_attempt_at", "lease_expires_at"),
}


async def open_storage(url: str, **kwargs: typing.Any) -> Storage:
    """A fresh storage for ``url`` (``memory://`` gets a fake clock), its tables created."""
    if url == "memory://":
        return MemorySagaStorage(clock=FakeClock())
    storage = SqlAlchemySagaStorage.from_url(url, **kwargs)
    await storage.create_tables()
    return storage


def kind(storage: Storage) -> str:
    """``memory``, ``sqlite``, ``postgresql`` or ``mysql``."""
    if isinstance(storage, MemorySagaStorage):
        return "memory"
    return family(storage.engine.dialect.name)


def another(storage: Storage) -> Storage:
    """A second storage on the same data, as another process would have (memory: the same one)."""
    if isinstance(storage, MemorySagaStorage):
        return storage
    return SqlAlchemySagaStorage.from_url(storage.engine.url)


def shift_sql(dialect: str, column: str, seconds: float) -> str:
    """SQL for ``column`` moved ``seconds`` into the past, in ``dialect``'s family."""
    if dialect == "postgresql":
        return f"{column} - make_interval(secs => {seconds!r})"
    if dialect == "mysql":
        return f"TIMESTAMPADD(MICROSECOND, {-round(seconds * 1_000_000)}, {column})"
    return f"strftime('%Y-%m-%d %H:%M:%f', {column}, '{-seconds:+.3f} seconds')"


async def advance(storage: Storage, seconds: float) -> None:
    """Let ``seconds`` pass as far as ``storage`` can tell."""
    if isinstance(storage, MemorySagaStorage):
        clock = storage._clock
        assert isinstance(clock, FakeClock)
        clock.advance(seconds)
        return
    dialect = kind(storage)
    async with storage.engine.begin() as conn:
        for table, columns in _SHIFTED.items():
            assignments = ", ".join(f"{c} = {shift_sql(dialect, c, seconds)}" for c in columns)
            await conn.exec_driver_sql(f"UPDATE {table} SET {assignments}")


def message(name: str = "OrderShipped", topic: str = "orders", **payload: typing.Any) -> OutboxMessage:
    """A message with a fresh id, its payload ``payload`` and the id in its headers."""
    message_id = uuid.uuid4()
    return OutboxMessage(message_id, topic, name, dict(payload), {"message-id": str(message_id)})


async def started(
    storage: Storage, *messages: OutboxMessage, owner: str = "runner-a", saga_id: uuid.UUID | None = None
) -> tuple[uuid.UUID, Lease]:
    """A running saga started with ``messages`` in its start's commit."""
    saga_id = saga_id or uuid.uuid4()
    lease = await storage.start_saga(NewSaga(saga_id, "order", {"n": 0}, outbox=list(messages)), owner, LEASE)
    assert lease is not None
    return saga_id, lease


def done(step: str) -> StepEntry:
    return StepEntry(step, "act", SagaStepStatus.COMPLETED)


async def names(storage: Storage, **filters: typing.Any) -> list[str]:
    """The names of the stored rows, in ``seq`` order (``list_outbox`` filters)."""
    return [row.name for row in await storage.list_outbox(limit=10_000, **filters)]


def claimed(rows: list[OutboxRecord]) -> list[str]:
    return [row.name for row in rows]


async def publish_all(storage: Storage, owner: str = "relay") -> list[str]:
    """Claim and mark until nothing is due; the names in the order they were published."""
    out: list[str] = []
    while rows := await storage.claim_outbox(owner, LEASE, limit=100):
        out += claimed(rows)
        assert await storage.mark_published(owner, [row.seq for row in rows]) == len(rows)
    return out


async def outbox_count(storage: Storage, status: OutboxStatus | None = None) -> int:
    """How many outbox rows are stored (of ``status``), counted by SQL on the SQL storages."""
    if isinstance(storage, MemorySagaStorage):
        return len(await storage.list_outbox(status=status, limit=1_000_000))
    query = sa.select(sa.func.count()).select_from(saga_outbox)
    if status is not None:
        query = query.where(saga_outbox.c.status == status.value)
    async with storage.engine.connect() as conn:
        return int(await conn.scalar(query) or 0)
