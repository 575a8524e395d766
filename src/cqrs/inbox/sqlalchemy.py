"""The SQL inbox: `SqlAlchemyInbox`, records in the table ``cqrs_inbox`` of the consumer's own database.

    pip install 'cqrs-saga[postgres]'   # or 'cqrs-saga[sqlite]', 'cqrs-saga[mysql]'

    inbox = SqlAlchemyInbox(engine)      # the AsyncEngine the handler writes with (or a URL)
    await inbox.create_tables()          # or Alembic: include `inbox_metadata`

    async with engine.begin() as conn:   # or: async with session.begin()
        if await inbox.record(conn, "billing", received.message_id):
            await conn.execute(...)      # the handler's writes, committed with the record

``cqrs_inbox`` (consumer, message_id) is the primary key; the record is an
insert-if-absent (``ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite,
``INSERT IGNORE`` on MySQL/MariaDB), so a second transaction recording the
same id waits on the first's uncommitted row and then finds it. A message
id the column cannot hold as it is (longer than 200 characters, or with a
NUL character or a lone surrogate) is recorded as ``sha256:`` and its
digest, so any producer's ids are taken. The table is
not part of the versioned saga schema (`SqlAlchemySagaStorage.create_tables`
neither creates nor checks it): a consumer service need not run sagas.
"""

from __future__ import annotations

try:
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql as pg_dialect
    from sqlalchemy.dialects import sqlite as sqlite_dialect
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
except ImportError as _error:  # pragma: no cover - exercised by a test that hides sqlalchemy
    raise ImportError(
        "cqrs.inbox.sqlalchemy needs SQLAlchemy: pip install 'cqrs-saga[sqlalchemy]' "
        "(or 'cqrs-saga[postgres]' / 'cqrs-saga[sqlite]' / 'cqrs-saga[mysql]' for the database drivers too)"
    ) from _error

import contextlib
import datetime
import hashlib
import typing

from cqrs.saga.storage.sqlalchemy._schema import Timestamp, database_now, family

__all__ = ["SqlAlchemyInbox", "inbox_metadata", "inbox_table"]

#: The inbox's own metadata (give it to Alembic beside the saga tables' ``Base.metadata``).
inbox_metadata = sa.MetaData()

inbox_table = sa.Table(
    "cqrs_inbox",
    inbox_metadata,
    sa.Column("consumer", sa.String(200), primary_key=True),
    sa.Column("message_id", sa.String(200), primary_key=True),
    sa.Column("received_at", Timestamp, nullable=False),
    sa.Index("ix_cqrs_inbox_received_at", "received_at"),
)

_LIMIT = 200


def _key(message_id: str) -> str:
    """What the table holds for ``message_id``: the id itself, or its digest where the column cannot hold it
    (over 200 characters, a NUL character, which PostgreSQL text refuses, or a lone surrogate)."""
    if len(message_id) <= _LIMIT and "\x00" not in message_id:
        try:
            message_id.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return message_id
    return "sha256:" + hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()


class SqlAlchemyInbox:
    """Message ids handled, per consumer, in ``cqrs_inbox`` (see the module doc).

    ``engine`` is the ``AsyncEngine`` the handlers write with, or a URL (an
    engine is made, and disposed by `close`). Transactions are that engine's
    connections; `record` also takes an ``AsyncSession`` in a transaction.
    """

    def __init__(self, engine: AsyncEngine | str) -> None:
        self._owned = isinstance(engine, str)
        self.engine = create_async_engine(engine) if isinstance(engine, str) else engine
        kind = family(self.engine.dialect.name)
        values = {"received_at": database_now(self.engine.dialect.name)}
        if kind == "postgresql":
            self._insert: sa.Executable = pg_dialect.insert(inbox_table).values(**values).on_conflict_do_nothing()
        elif kind == "sqlite":
            self._insert = sqlite_dialect.insert(inbox_table).values(**values).on_conflict_do_nothing()
        else:  # the key is checked for length first: IGNORE would also hide a truncation
            self._insert = sa.insert(inbox_table).values(**values).prefix_with("IGNORE")
        self._now = database_now(self.engine.dialect.name)

    async def create_tables(self) -> None:
        """Create ``cqrs_inbox`` if it is missing."""
        async with self.engine.begin() as conn:
            await conn.run_sync(inbox_metadata.create_all, checkfirst=True)

    async def close(self) -> None:
        """Dispose of the engine if it was made from a URL."""
        if self._owned:
            await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def transaction(self) -> typing.AsyncIterator[AsyncConnection]:
        """A connection of the engine in a transaction: committed when the block ends, rolled back if it raises."""
        async with self.engine.begin() as conn:
            yield conn

    async def record(self, tx: AsyncConnection | AsyncSession, consumer: str, message_id: str) -> bool:
        """Insert the record in ``tx`` (a connection or session in a transaction); False if it was there.

        A consumer name is 1 to 200 characters and a message id is not empty (`ValueError` otherwise); an id
        the column cannot hold as it is (see the module doc) is recorded by its SHA-256 digest.
        """
        if not consumer or len(consumer) > _LIMIT:
            raise ValueError(f"An inbox consumer must be 1 to {_LIMIT} characters, got {consumer!r}")
        if not message_id:
            raise ValueError("An inbox message id must not be empty")
        result = await tx.execute(self._insert, {"consumer": consumer, "message_id": _key(message_id)})
        return bool(getattr(result, "rowcount", 0) == 1)

    async def handled(self, consumer: str, message_id: str) -> bool:
        """Whether a committed record says ``consumer`` handled ``message_id``."""
        query = sa.select(sa.literal(1)).where(
            inbox_table.c.consumer == consumer, inbox_table.c.message_id == _key(message_id)
        )
        async with self.engine.connect() as conn:
            return (await conn.scalar(query)) is not None

    async def purge(self, *, older_than: datetime.timedelta, limit: int = 1000) -> int:
        """Delete up to ``limit`` records received more than ``older_than`` ago (by the database's clock)."""
        if older_than < datetime.timedelta(0):
            raise ValueError(f"purge(older_than=...) must not be negative, got {older_than}")
        async with self.engine.begin() as conn:
            now = await conn.scalar(sa.select(self._now))
            assert now is not None
            oldest = (
                sa.select(inbox_table.c.consumer, inbox_table.c.message_id)
                .where(inbox_table.c.received_at <= now - older_than)
                .order_by(inbox_table.c.received_at)
                .limit(max(limit, 0))
            )
            doomed = [tuple(row) for row in (await conn.execute(oldest)).all()]
            if doomed:
                key = sa.tuple_(inbox_table.c.consumer, inbox_table.c.message_id)
                await conn.execute(sa.delete(inbox_table).where(key.in_(doomed)))
        return len(doomed)
