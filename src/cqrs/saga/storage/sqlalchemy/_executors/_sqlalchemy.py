"""The executor that runs every statement through SQLAlchemy Core, on connections of the engine's pool.

Each call runs on a connection of its own (``begin()`` / ``connect()`` of the
engine's ``sync_engine``) inside one greenlet: what ``AsyncConnection`` does,
with one greenlet switch per call instead of three. On PostgreSQL a single
statement runs on an ``AUTOCOMMIT`` connection of the same pool, so a write is
one round trip, not ``BEGIN`` / statement / ``COMMIT`` (asyncpg then sends no
``BEGIN``; each statement commits on its own). Elsewhere every call is one
transaction, committed at its end or rolled back on error.

SQLite has one writer at a time: this process's writers queue on an asyncio
lock rather than in SQLite's busy handler, which sleeps and retries. A
single-connection pool (in-memory SQLite) is shared by every checkout, so
there reads queue on the same lock.
"""

from __future__ import annotations

import asyncio
import typing

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import greenlet_spawn

from cqrs.saga.storage.sqlalchemy._schema import family

__all__ = ["SqlAlchemyExecutor", "Then"]

Params = typing.Mapping[str, typing.Any]
Row = typing.Sequence[typing.Any]
T = typing.TypeVar("T")
#: The statements of a conditional write after its first, each with one parameter set or a list of them.
Then = typing.Sequence[tuple[typing.Any, Params | typing.Sequence[Params]]]


class _LoopLock:
    """An asyncio.Lock for the running event loop (a new one if the loop changed)."""

    __slots__ = ("_lock", "_loop")

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock


class SqlAlchemyExecutor:
    """Every statement through SQLAlchemy: the engine's events, ``echo`` and execution options apply."""

    fast_path = False

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        kind = family(engine.dialect.name)
        sync = engine.sync_engine
        self._single: sa.Engine = sync.execution_options(isolation_level="AUTOCOMMIT") if kind == "postgresql" else sync
        self._transactions = sync
        sqlite = kind == "sqlite"
        self._write_lock = _LoopLock() if sqlite else None
        self._read_lock = self._write_lock if sqlite and isinstance(sync.pool, StaticPool) else None

    async def write(self, statement: typing.Any, params: Params) -> int:
        return await self._run(self._write_lock, self._write_now, statement, params)

    async def write_returning(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        return await self._run(self._write_lock, self._write_returning_now, statement, params)

    async def fetch(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        return await self._run(self._write_lock, self._write_returning_now, statement, params)

    async def read(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        return await self._run(self._read_lock, self._read_now, statement, params)

    async def transaction(self, work: typing.Callable[[sa.Connection], T]) -> T:
        return await self._run(self._write_lock, self._transaction_now, work)

    async def write_then(self, first: typing.Any, params: Params, then: Then) -> bool:
        return await self._run(self._write_lock, self._write_then_now, first, params, then)

    async def close(self) -> None:
        return None

    @staticmethod
    async def _run(lock: _LoopLock | None, fn: typing.Callable[..., T], *args: typing.Any) -> T:
        if lock is None:
            return await greenlet_spawn(fn, *args)
        async with lock.get():
            return await greenlet_spawn(fn, *args)

    # The ``_..._now`` methods are synchronous SQLAlchemy code, run in a greenlet.

    def _write_now(self, statement: typing.Any, params: Params) -> int:
        with self._single.begin() as conn:
            return conn.execute(statement, params).rowcount

    def _write_returning_now(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        with self._single.begin() as conn:
            return conn.execute(statement, params).all()

    def _read_now(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        with self._single.connect() as conn:
            return conn.execute(statement, params).all()

    def _transaction_now(self, work: typing.Callable[[sa.Connection], T]) -> T:
        with self._transactions.begin() as conn:
            return work(conn)

    def _write_then_now(self, first: typing.Any, params: Params, then: Then) -> bool:
        with self._transactions.begin() as conn:
            if conn.execute(first, params).rowcount != 1:
                return False
            for statement, values in then:
                conn.execute(statement, values)  # a list of parameter sets: one row each
            return True
