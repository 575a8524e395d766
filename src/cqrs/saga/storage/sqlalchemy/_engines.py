"""The engine a storage works on: taken from what it is given, or made by `SqlAlchemySagaStorage.from_url`.

Engines made here are set up for sagas: on SQLite a 30 s busy timeout, WAL
journal mode, foreign keys and ``synchronous`` (FULL, or NORMAL with
``?synchronous=normal`` in the URL) on every connection (and a
single-connection pool for an in-memory database); on MySQL and MariaDB
connections recycled before the server's idle timeout. A missing driver's
``ImportError`` names the extra that installs it. `sqlite_settings` tells how
an engine made here connects, for the SQLite fast path's own connections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
import weakref

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

from cqrs.saga.storage.sqlalchemy._schema import family

__all__ = ["SYNCHRONOUS", "SessionOrFactory", "SqliteSettings", "create_engine", "engine_of", "sqlite_settings"]

SessionOrFactory = typing.Union["async_sessionmaker[AsyncSession]", AsyncSession, AsyncEngine]
_DRIVER_EXTRAS = {"postgresql": "postgres", "sqlite": "sqlite", "mysql": "mysql", "mariadb": "mysql"}
#: The values of a SQLite URL's ``synchronous`` query parameter (WAL mode), as ``PRAGMA synchronous`` values.
SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}


@dataclasses.dataclass(frozen=True)
class SqliteSettings:
    """How the connections of a SQLite engine made by `create_engine` are set up."""

    #: sqlite3's busy timeout, seconds.
    timeout: float
    #: ``PRAGMA synchronous`` of every connection: ``FULL`` or ``NORMAL``.
    synchronous: str
    #: Whether the database is in memory (then other connections would not see it).
    in_memory: bool
    #: The JSON ``json_serializer`` / ``json_deserializer`` the engine was made with, if any.
    json: dict[str, typing.Any] = dataclasses.field(default_factory=dict)


_settings: weakref.WeakKeyDictionary[sa.Engine, SqliteSettings] = weakref.WeakKeyDictionary()


def sqlite_settings(engine: AsyncEngine) -> SqliteSettings | None:
    """The settings of a SQLite engine made by `create_engine`; None for any other engine."""
    return _settings.get(engine.sync_engine)


def engine_of(source: SessionOrFactory) -> AsyncEngine:
    if isinstance(source, AsyncEngine):
        return source
    bind = source.bind if isinstance(source, AsyncSession) else source.kw.get("bind")
    if isinstance(bind, AsyncConnection):
        return bind.engine
    if isinstance(bind, AsyncEngine):
        return bind
    raise TypeError(
        "SqlAlchemySagaStorage needs an async_sessionmaker (or AsyncSession) bound to an AsyncEngine, "
        f"got one bound to {bind!r}"
    )


def create_engine(url: str | sa.URL, **engine_kwargs: typing.Any) -> AsyncEngine:
    """An async engine for ``url``, set up for sagas (SQLite: busy timeout, WAL, in-memory pool)."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    in_memory = parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
    synchronous = "FULL"
    if backend == "sqlite":
        # Ours, not the driver's: taken out of the URL before SQLAlchemy sees it.
        synchronous = _synchronous(parsed.query.get("synchronous", "full"))
        parsed = parsed.difference_update_query(["synchronous"])
        if in_memory and "poolclass" not in engine_kwargs:
            # One connection, or each checkout would see its own empty database.
            engine_kwargs["poolclass"] = StaticPool
            for option in ("pool_size", "max_overflow", "pool_timeout"):
                engine_kwargs.pop(option, None)
        connect_args = dict(engine_kwargs.pop("connect_args", {}))
        connect_args.setdefault("timeout", 30.0)  # sqlite3's busy timeout, seconds
        engine_kwargs["connect_args"] = connect_args
        # Every storage call ends its transaction itself (commit, or rollback on error), so the
        # pool's extra ROLLBACK on check-in (one more aiosqlite thread hop per call) is skipped.
        engine_kwargs.setdefault("pool_reset_on_return", None)
    elif family(backend) == "mysql":
        # The server closes connections idle for wait_timeout (8 hours by default): replace them sooner.
        engine_kwargs.setdefault("pool_recycle", 3600)
    try:
        engine = create_async_engine(parsed, **engine_kwargs)
    except ImportError as error:
        extra = _DRIVER_EXTRAS.get(backend)
        install = f"pip install 'cqrs-saga[{extra}]'" if extra else f"install the {parsed.get_driver_name()} driver"
        raise ImportError(f"The database driver for {parsed.drivername!r} is not installed: {install}") from error
    if backend == "sqlite":
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas(not in_memory, synchronous))
        timeout = float(engine_kwargs["connect_args"]["timeout"])
        json = {k: v for k, v in engine_kwargs.items() if k in ("json_serializer", "json_deserializer")}
        _settings[engine.sync_engine] = SqliteSettings(timeout, synchronous, in_memory, json)
    return engine


def _synchronous(value: typing.Any) -> str:
    if isinstance(value, str) and value.lower() in SYNCHRONOUS:
        return SYNCHRONOUS[value.lower()]
    raise ValueError(
        f"A SQLite URL's synchronous must be one of {', '.join(SYNCHRONOUS)} (see docs/storage.md), got {value!r}"
    )


def _sqlite_pragmas(file_database: bool, synchronous: str) -> typing.Callable[[typing.Any, typing.Any], None]:
    def on_connect(dbapi_connection: typing.Any, connection_record: typing.Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            if file_database:
                # WAL: readers do not block the writer. Persistent, so usually already set.
                with contextlib.suppress(Exception):
                    cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute(f"PRAGMA synchronous = {synchronous}")
        finally:
            cursor.close()

    return on_connect
