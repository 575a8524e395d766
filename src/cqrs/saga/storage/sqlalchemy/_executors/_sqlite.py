"""The SQLite fast write path: each write transaction is one call to a writer thread of the storage's own.

Through SQLAlchemy and aiosqlite a checkpoint is three driver calls (``UPDATE``,
``INSERT``, ``COMMIT``), each a hop to aiosqlite's thread and back inside a
greenlet. Here the storage owns stdlib ``sqlite3`` connections, opened and
used only on a writer thread of its own (`_writer`), and a write transaction
is one function run there: one hop there and back whatever the number of
statements.

- The SQL is SQLAlchemy's own compilation of the storage's statements for the
  engine's dialect (``compiled.string``, parameters in ``compiled.positiontup``
  order through each type's public ``bind_processor``: JSON, ids and
  timestamps are sent as SQLAlchemy sends them), done once per statement.
  ``sqlite3`` caches the prepared statements. A statement with expanding
  parameters (``IN`` a list) has no fixed text: it runs as the others below.
- A single statement runs in autocommit (it takes the write lock itself); a
  conditional write (`write_then`) is ``BEGIN IMMEDIATE``, the statements,
  ``COMMIT`` (``ROLLBACK`` when the first matched nothing, or on error), so it
  holds the write lock from its start. The connection waits for other
  processes' locks for the engine's busy timeout.
- The other writes (claims, ``RETURNING`` writes, schema work: `transaction`,
  `write_returning`) run on the same thread too, through SQLAlchemy Core on a
  synchronous engine of the executor's own over a second ``sqlite3``
  connection, which sends ``BEGIN IMMEDIATE`` before a transaction's first
  write (``isolation_level="IMMEDIATE"``). So all of this storage's writes
  queue on the one thread and never wait in SQLite's busy handler for each
  other. Reads go through the storage's engine (in WAL mode readers never
  wait for the writer).
- ``sqlite3``'s errors become SQLAlchemy's (``DBAPIError.instance``):
  ``IntegrityError``, ``OperationalError`` (``database is locked``), ...; ``orig``
  is the ``sqlite3`` exception.

The connections get what `create_engine` gives the engine's: busy timeout,
WAL, foreign keys, ``synchronous`` and the JSON serializers. The storage
engine's events and ``echo`` do not see these writes (a ``sqlite3`` trace
callback does: `on_writer`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import typing

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

from cqrs.saga.storage.sqlalchemy._engines import sqlite_settings
from cqrs.saga.storage.sqlalchemy._executors._sqlalchemy import SqlAlchemyExecutor, Then
from cqrs.saga.storage.sqlalchemy._executors._writer import WriterThread

__all__ = ["SqliteExecutor", "why_not_fast"]

Params = typing.Mapping[str, typing.Any]
Row = typing.Sequence[typing.Any]
T = typing.TypeVar("T")
_Converter = typing.Callable[[typing.Any], typing.Any]


def why_not_fast(engine: AsyncEngine, asked: bool) -> str | None:
    """Why the SQLite fast path cannot be used on ``engine`` (None: it can).

    An engine the storage did not make is used only when ``asked``: the fast path's connection is its own, so
    the engine's connect events (pragmas, functions, keys) would not apply to it.
    """
    if engine.get_execution_options().get("schema_translate_map"):
        return "the engine has a schema_translate_map, which the fast path's precompiled SQL would not apply"
    settings = sqlite_settings(engine)
    database = engine.url.database
    if (settings is not None and settings.in_memory) or database in (None, "", ":memory:") or (
        engine.url.query.get("mode") == "memory"
    ):
        return "the database is in memory, which a connection of its own would not see"
    if settings is None and not asked:
        return (
            "the engine was not made by SqlAlchemySagaStorage.from_url, and the fast path's own connection would "
            "miss its connect events; fast_path=True uses it anyway"
        )
    return None


class _Prepared:
    """A statement compiled once for the engine's SQLite dialect: its SQL and its parameters in ``?`` order."""

    __slots__ = ("converters", "defaults", "names", "sql")

    def __init__(self, statement: typing.Any, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        if compiled.post_compile_params or compiled.literal_execute_params:
            raise ValueError(f"Not a fixed SQL text (expanding parameters): {compiled}")
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # Parameters the statement gives a value of its own (a subquery's OFFSET 0, ...).
        values = compiled.params
        self.defaults = {name: values[name] for name in self.names if not compiled.binds[name].required}
        converters: list[tuple[int, _Converter]] = []
        for position, name in enumerate(self.names):
            processor = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                converters.append((position, processor))
        self.converters = tuple(converters)

    def arguments(self, params: Params) -> list[typing.Any]:
        if self.defaults:
            params = {**self.defaults, **params}
        args = [params[name] for name in self.names]
        for position, convert in self.converters:
            args[position] = convert(args[position])
        return args


#: A prepared statement with its arguments: one list, or one list per row.
_Bound = tuple[_Prepared, list[typing.Any] | list[list[typing.Any]], bool]


class _Connections(threading.local):
    """A writer thread's own connections: the direct writes' and the engine of the rest. Per thread, because
    a write made while `SqliteExecutor.close` waits for the old thread goes to a new one."""

    connection: sqlite3.Connection | None = None
    engine: sa.Engine | None = None


class SqliteExecutor:
    """Every write on the storage's writer thread, one hop per transaction; reads through ``fallback``."""

    fast_path = True

    def __init__(self, engine: AsyncEngine, fallback: SqlAlchemyExecutor) -> None:
        self.engine = engine
        self._sync = engine.sync_engine
        self._fallback = fallback
        settings = sqlite_settings(engine)
        self._timeout = settings.timeout if settings is not None else 30.0
        self._synchronous = settings.synchronous if settings is not None else None
        self._json = settings.json if settings is not None else {}
        # By id() of the statement, which is kept with it (so its id is never another's); `Statements`
        # builds each once. None: a statement with no fixed text, run through SQLAlchemy.
        self._prepared: dict[int, tuple[typing.Any, _Prepared | None]] = {}
        self._thread: WriterThread | None = None
        # Opened, used and closed on the writer thread only.
        self._on_thread = _Connections()

    # -- the executor interface ---------------------------------------------------------------------------

    async def write(self, statement: typing.Any, params: Params) -> int:
        prepared = self._prepare(statement)
        if prepared is None:
            return await self._call(self._through_sqlalchemy_now, _rowcount, statement, params)
        args = self._arguments(prepared, params)
        return await self._call(self._write_now, prepared, args)

    async def write_then(self, first: typing.Any, params: Params, then: Then) -> bool:
        prepared = self._prepare(first)
        rest = [(self._prepare(statement), values) for statement, values in then]
        if prepared is None or any(p is None for p, _ in rest):
            return await self._call(self._through_sqlalchemy_now, _then(then), first, params)
        args = self._arguments(prepared, params)
        bound: list[_Bound] = []
        for p, values in rest:
            assert p is not None
            if isinstance(values, typing.Mapping):
                bound.append((p, self._arguments(p, values), False))
            else:
                bound.append((p, [self._arguments(p, row) for row in values], True))
        return await self._call(self._write_then_now, prepared, args, bound)

    async def write_returning(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        return await self._call(self._through_sqlalchemy_now, _all, statement, params)

    async def fetch(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        """The claims: `write_returning`, on the writer thread."""
        return await self.write_returning(statement, params)

    async def read(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        return await self._fallback.read(statement, params)

    async def transaction(self, work: typing.Callable[[sa.Connection], T]) -> T:
        return await self._call(self._transaction_now, work)

    async def close(self) -> None:
        try:
            # A write made while the close waits starts a new writer thread: that one is closed too.
            while (thread := self._thread) is not None:
                self._thread = None
                try:
                    await thread.call(self._close_now)
                finally:
                    thread.stop()  # at once: nothing is queued after the close
        finally:
            await self._fallback.close()

    async def on_writer(self, fn: typing.Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the writer's ``sqlite3`` connection, on its thread (for tests and diagnostics: a trace
        callback, ``PRAGMA`` reads)."""
        return await self._call(lambda: fn(self._open()))

    # -- on the loop ---------------------------------------------------------------------------------------

    def _prepare(self, statement: typing.Any) -> _Prepared | None:
        entry = self._prepared.get(id(statement))
        if entry is not None and entry[0] is statement:
            return entry[1]
        try:
            prepared: _Prepared | None = _Prepared(statement, self._sync.dialect)
        except ValueError:
            prepared = None
        self._prepared[id(statement)] = (statement, prepared)
        return prepared

    def _arguments(self, prepared: _Prepared, params: Params) -> list[typing.Any]:
        try:
            return prepared.arguments(params)
        except Exception as error:  # a value the JSON encoder refuses: what SQLAlchemy raises for it
            raise sa.exc.StatementError(
                f"({type(error).__module__}.{type(error).__qualname__}) {error}", prepared.sql, params, error,
                hide_parameters=self._sync.hide_parameters,
            ) from error

    async def _call(self, fn: typing.Callable[..., T], *args: typing.Any) -> T:
        thread = self._thread
        if thread is None:
            thread = self._thread = WriterThread("cqrs-sqlite-writer")
        return await thread.call(fn, *args)

    # -- on the writer thread ------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        on_thread = self._on_thread
        connection = on_thread.connection
        if connection is None:
            connection = on_thread.connection = _connect(self.engine, self._timeout, self._synchronous)
        return connection

    def _write_now(self, prepared: _Prepared, args: list[typing.Any]) -> int:
        connection = self._open()
        try:
            return connection.execute(prepared.sql, args).rowcount
        except sqlite3.Error as error:
            raise self._translate(error, prepared.sql, args) from error

    def _write_then_now(self, first: _Prepared, args: list[typing.Any], then: list[_Bound]) -> bool:
        connection = self._open()
        sql, current = first.sql, args
        try:
            connection.execute("BEGIN IMMEDIATE")
            if connection.execute(sql, current).rowcount != 1:
                connection.execute("ROLLBACK")  # nothing written: the lock goes at once
                return False
            for prepared, values, many in then:
                sql, current = prepared.sql, values
                if many:
                    connection.executemany(sql, values)
                else:
                    connection.execute(sql, values)
            sql, current = "COMMIT", []
            connection.execute(sql)
            return True
        except BaseException as error:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise self._translate(error, sql, current) from error
            raise

    def _transaction_now(self, work: typing.Callable[[sa.Connection], T]) -> T:
        on_thread = self._on_thread
        engine = on_thread.engine
        if engine is None:
            engine = on_thread.engine = sa.create_engine(
                self.engine.url.set(drivername="sqlite", query={}),  # the creator connects
                creator=lambda: _connect(self.engine, self._timeout, self._synchronous, "IMMEDIATE"),
                poolclass=StaticPool, hide_parameters=self._sync.hide_parameters, **self._json,
            )
        with engine.begin() as conn:
            return work(conn)

    def _through_sqlalchemy_now(
        self, run: typing.Callable[[sa.Connection, typing.Any, Params], T], statement: typing.Any, params: Params
    ) -> T:
        return self._transaction_now(lambda conn: run(conn, statement, params))

    def _close_now(self) -> None:
        on_thread = self._on_thread
        connection, on_thread.connection = on_thread.connection, None
        engine, on_thread.engine = on_thread.engine, None
        if connection is not None:
            connection.close()
        if engine is not None:
            engine.dispose()

    def _translate(self, error: sqlite3.Error, sql: str, args: list[typing.Any]) -> BaseException:
        """SQLAlchemy's exception for ``sqlite3``'s ``error`` (as its own statement execution would raise)."""
        return sa.exc.DBAPIError.instance(
            sql, tuple(args), error, sqlite3.Error, hide_parameters=self._sync.hide_parameters,
            dialect=self._sync.dialect,
        )


def _rowcount(conn: sa.Connection, statement: typing.Any, params: Params) -> int:
    return conn.execute(statement, params).rowcount


def _all(conn: sa.Connection, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
    return conn.execute(statement, params).all()


def _then(then: Then) -> typing.Callable[[sa.Connection, typing.Any, Params], bool]:
    """`SqliteExecutor.write_then` through SQLAlchemy (a statement of it has no fixed text)."""

    def run(conn: sa.Connection, first: typing.Any, params: Params) -> bool:
        if conn.execute(first, params).rowcount != 1:
            return False
        for statement, values in then:
            conn.execute(statement, values)  # a list of parameter sets: one row each
        return True

    return run


def _connect(
    engine: AsyncEngine, timeout: float, synchronous: str | None,
    isolation_level: typing.Literal["IMMEDIATE"] | None = None,
) -> sqlite3.Connection:
    """A writer connection to the engine's database file, set up as `create_engine` sets up the engine's.

    ``isolation_level``: None for the direct writes, which begin their transactions themselves;
    ``"IMMEDIATE"`` for SQLAlchemy's, where ``sqlite3`` sends ``BEGIN IMMEDIATE`` before the first write.
    """
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    database = args[0] if args else kwargs["database"]
    connection = sqlite3.connect(
        database, timeout=timeout, uri=bool(kwargs.get("uri", False)), isolation_level=isolation_level,
    )
    try:
        connection.execute("PRAGMA foreign_keys = ON")
        with contextlib.suppress(sqlite3.Error):  # persistent, so usually already set
            connection.execute("PRAGMA journal_mode = WAL")
        if synchronous is not None:
            connection.execute(f"PRAGMA synchronous = {synchronous}")
    except BaseException:
        connection.close()
        raise
    return connection
