"""How the SQL storage runs its statements: a small executor interface and the executors behind it.

`Executor` is all the storage sees: ``write`` (one statement, committed, its
row count), ``write_returning`` (the same, with its rows), ``fetch`` (the same,
on the fast path where there is one: the claims), ``read``,
``write_then`` (a conditional write: a statement, then others only if it
matched one row, in one transaction: the checkpoints of SQLite and MySQL) and
``transaction`` (a function of a SQLAlchemy ``Connection`` run in one
transaction, for the other multi-statement work). `make_executor` picks one
for an engine:

- `SqlAlchemyExecutor` runs everything through SQLAlchemy Core, on
  connections of the engine's pool: every driver, every event listener,
  ``echo`` and ``schema_translate_map`` apply.
- `AsyncpgExecutor` is the fast write path of PostgreSQL through asyncpg:
  ``write`` runs the statement's SQL (compiled once by SQLAlchemy) on the
  pooled connection's asyncpg connection itself, skipping SQLAlchemy's
  statement execution, which costs several times the client CPU of the
  statement; everything else goes through a `SqlAlchemyExecutor`. SQLAlchemy's
  statement events and ``echo`` do not see those writes.
- `SqliteExecutor` (`_sqlite`) is SQLite's: every write transaction is one
  call to a writer thread with ``sqlite3`` connections of its own (one thread
  hop per transaction, not one per statement); ``write`` and ``write_then``
  run SQLAlchemy's compiled SQL on the driver, the rest SQLAlchemy Core on
  that thread. Reads go through a `SqlAlchemyExecutor`.

The fast path is on by default wherever it can be used (asyncpg, or a SQLite
file through an engine `from_url` made; no ``schema_translate_map``) and
never switches itself off: whether it is on is
decided once, when the storage is made, and logged once per engine (logger
``cqrs.saga.storage``). ``fast_path=False`` routes every write through
SQLAlchemy.
"""

from __future__ import annotations

import logging
import typing
import weakref

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from cqrs.saga.storage.sqlalchemy._executors._sqlalchemy import SqlAlchemyExecutor, Then

__all__ = ["Executor", "Params", "SqlAlchemyExecutor", "Then", "make_executor"]

logger = logging.getLogger("cqrs.saga.storage")

Params = typing.Mapping[str, typing.Any]
Row = typing.Sequence[typing.Any]
T = typing.TypeVar("T")

#: What was logged about each engine's fast path (each message once, however many storages use the engine).
_told: weakref.WeakKeyDictionary[sa.Engine, set[tuple[int, str]]] = weakref.WeakKeyDictionary()


class Executor(typing.Protocol):
    """Runs the storage's statements; every call ends its own transaction (commit, or rollback on error)."""

    #: Whether writes skip SQLAlchemy's execution (the asyncpg and SQLite fast paths).
    fast_path: bool

    async def write(self, statement: typing.Any, params: Params) -> int:
        """Run one write statement and commit it; its row count (rows matched, on MySQL)."""

    async def write_returning(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        """Run one write statement with ``RETURNING`` (or a ``SELECT`` over one) and commit it; its rows."""

    async def fetch(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        """`write_returning` on the fast path where there is one (the asyncpg executor runs it on the driver
        connection: the rows are the driver's, JSON decoded by the engine's codecs, UUIDs possibly the
        driver's own UUID type). The statement must have fixed SQL (no expanding parameters)."""

    async def read(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        """Run one read; its rows."""

    async def write_then(self, first: typing.Any, params: Params, then: Then) -> bool:
        """Run ``first``; only if it matched one row, each of ``then`` (a list of parameter sets inserts one row
        each); in one transaction. Whether ``first`` matched."""

    async def transaction(self, work: typing.Callable[[sa.Connection], T]) -> T:
        """Run ``work`` (synchronous SQLAlchemy code) on one connection, in one transaction it commits."""

    async def close(self) -> None:
        """Give back every connection the executor holds."""


def make_executor(engine: AsyncEngine, json_params: typing.AbstractSet[str], fast_path: bool | None) -> Executor:
    """The executor for ``engine``: the asyncpg fast path where it can and may be used, else SQLAlchemy.

    ``fast_path``: None uses it where it can be used; True asks for it (a warning says why when it
    cannot be used); False never uses it.
    """
    sqlalchemy_executor = SqlAlchemyExecutor(engine)
    if engine.dialect.name == "sqlite":
        return _sqlite_executor(engine, sqlalchemy_executor, fast_path)
    reason = _why_not_fast(engine)
    if reason is None and fast_path is not False:
        from cqrs.saga.storage.sqlalchemy._executors._asyncpg import AsyncpgExecutor

        _tell_once(
            engine,
            logging.INFO,
            "Saga storage on %s: the asyncpg fast path is on. Single-statement saga writes run on the "
            "asyncpg connection itself, so SQLAlchemy statement events and echo do not see them; "
            "SqlAlchemySagaStorage(..., fast_path=False) routes them through SQLAlchemy.",
            engine.url.render_as_string(hide_password=True),
        )
        return AsyncpgExecutor(engine, sqlalchemy_executor, json_params)
    if reason is not None and (fast_path or (fast_path is None and engine.dialect.driver == "asyncpg")):
        _tell_once(
            engine,
            logging.WARNING if fast_path else logging.INFO,
            "Saga storage on %s: the asyncpg fast path is off (%s); every write goes through SQLAlchemy.",
            engine.url.render_as_string(hide_password=True),
            reason,
        )
    return sqlalchemy_executor


def _sqlite_executor(engine: AsyncEngine, fallback: SqlAlchemyExecutor, fast_path: bool | None) -> Executor:
    from cqrs.saga.storage.sqlalchemy._executors import _sqlite

    url = engine.url.render_as_string(hide_password=True)
    reason = _sqlite.why_not_fast(engine, asked=fast_path is True)
    if reason is None and fast_path is not False:
        _tell_once(
            engine,
            logging.INFO,
            "Saga storage on %s: the SQLite fast path is on. Writes run on a sqlite3 connection of the storage's "
            "own, one call per transaction on its thread, so SQLAlchemy statement events and echo do not see "
            "them; SqlAlchemySagaStorage(..., fast_path=False) routes them through SQLAlchemy.",
            url,
        )
        return _sqlite.SqliteExecutor(engine, fallback)
    if reason is not None and fast_path is not False:
        _tell_once(
            engine, logging.WARNING if fast_path else logging.INFO,
            "Saga storage on %s: the SQLite fast path is off (%s); every write goes through SQLAlchemy.", url, reason,
        )
    return fallback


def _why_not_fast(engine: AsyncEngine) -> str | None:
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "asyncpg":
        return f"the driver is {engine.dialect.name}+{engine.dialect.driver}, not postgresql+asyncpg"
    if engine.get_execution_options().get("schema_translate_map"):
        return "the engine has a schema_translate_map, which the fast path's precompiled SQL would not apply"
    return None


def _tell_once(engine: AsyncEngine, level: int, message: str, *args: object) -> None:
    told = _told.setdefault(engine.sync_engine, set())
    if (level, message) not in told:
        told.add((level, message))
        logger.log(level, message, *args)
