"""The asyncpg fast write path, on SQLAlchemy's public API only.

A write through SQLAlchemy's ``Connection`` costs several times the client CPU
of the statement itself (execution context, compiled-cache lookup, cursor and
result objects, events, greenlet switches, pool checkout and checkin). Here a
single-statement write instead runs the statement's SQL on a pooled
connection's asyncpg connection with positional parameters:

- The SQL is SQLAlchemy's own compilation of the statement for the engine's
  dialect (``statement.compile(dialect=...)``: ``compiled.string`` and the
  parameter order ``compiled.positiontup``), done once per statement, so the
  schema stays defined once, by the tables. asyncpg prepares it once per
  connection and reuses it.
- JSON parameters (the statements name them) are encoded here; the dialect's
  asyncpg codecs take JSON as text. Other parameters go through the type's
  public ``bind_processor``, if it has one.
- No transaction is begun: the statement commits on its own, as on the
  ``AUTOCOMMIT`` connections of the SQLAlchemy path (a connection comes back
  to the pool with its transaction ended, so none is open on checkout).
- Connections come from the engine's own pool (``AsyncEngine.raw_connection``:
  its size, overflow, pre-ping, recycling, connect events and dispose apply).
  From a ``QueuePool`` (the default) a connection is lent to the storage
  rather than checked in after each statement: it is kept for the storage's
  next write until the event loop's next iteration, when the idle ones go back,
  and for at most ``_LEND_SECONDS`` in all. So back-to-back writes (a saga's
  steps, many sagas at once) skip the checkout and checkin, and the pool gets
  every connection back as soon as the storage stops writing.
- asyncpg's errors become SQLAlchemy's (`_translate`): ``IntegrityError`` for
  a violated constraint; ``OperationalError`` with ``connection_invalidated``
  for a lost connection, which is invalidated (closed, never handed out again)
  and the rest of the pool with it (``engine.dispose()``: after a restart or
  failover they are gone too); ``DBAPIError`` for anything else, the
  connection going back to the pool. ``orig`` is asyncpg's exception. A
  cancellation invalidates the connection (a statement may be in flight).

SQLAlchemy's statement events (``before_cursor_execute``, ...) and ``echo`` do
not see these writes; asyncpg's own query loggers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import typing

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool, PoolProxiedConnection, QueuePool
from sqlalchemy.util import greenlet_spawn

from cqrs.saga.storage.sqlalchemy._executors._sqlalchemy import SqlAlchemyExecutor, Then

__all__ = ["AsyncpgExecutor"]

Params = typing.Mapping[str, typing.Any]
Row = typing.Sequence[typing.Any]
T = typing.TypeVar("T")

#: How long after its checkout a lent connection may still start a write, however busy the
#: storage; the next write returns it to the pool (where pre-ping, recycling and invalidation
#: apply on its next checkout) and checks one out again. That costs one checkout per 0.1 s. It
#: does not make the pool fair: a waiting checkout may still lose the connection to the writer.
_LEND_SECONDS = 0.1
#: JSON parameters as compact text (what SQLAlchemy's JSONB type would send, without the spaces).
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
#: SQLSTATEs besides class 08 (connection exception) that mean the server has dropped the connection.
_GONE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})  # admin shutdown, crash shutdown, cannot connect now
#: A connection lent to the writes: the pool's connection, the pool it came from, when it is due back.
_Lent = tuple[PoolProxiedConnection, Pool, float]


def _to_json(value: typing.Any) -> str | None:
    # Our JSON columns are none_as_null: Python None is SQL NULL.
    return None if value is None else _COMPACT_JSON.encode(value)


class Prepared:
    """A write statement compiled once for the asyncpg dialect, to run on the driver connection.

    ``sql`` is SQLAlchemy's compilation (``$1::UUID``, ...); ``names`` its parameters in ``$n``
    order; ``converters`` what is done to some of them first (JSON to text).
    """

    __slots__ = ("converters", "names", "sql")

    def __init__(
        self, sql: str, names: tuple[str, ...],
        converters: tuple[tuple[int, typing.Callable[[typing.Any], typing.Any]], ...],
    ) -> None:
        self.sql = sql
        self.names = names
        self.converters = converters

    @classmethod
    def compile(cls, statement: typing.Any, dialect: sa.Dialect, json_params: typing.AbstractSet[str]) -> Prepared:
        compiled = statement.compile(dialect=dialect)
        if compiled.post_compile_params or compiled.literal_execute_params:
            raise ValueError(f"Not a fixed SQL text (expanding parameters), run it through SQLAlchemy: {compiled}")
        names = tuple(compiled.positiontup or ())
        converters: list[tuple[int, typing.Callable[[typing.Any], typing.Any]]] = []
        for position, name in enumerate(names):
            if name in json_params:
                converters.append((position, _to_json))
                continue
            processor = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                converters.append((position, processor))
        return cls(compiled.string, names, tuple(converters))

    def arguments(self, params: Params) -> list[typing.Any]:
        args = [params[name] for name in self.names]
        for position, convert in self.converters:
            args[position] = convert(args[position])
        return args


class _Lender:
    """The connections lent to an executor's writes, on one event loop."""

    __slots__ = ("idle", "loop", "retired", "scheduled", "tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.idle: list[_Lent] = []  # free for the next write, until the loop's next iteration
        self.retired: list[_Lent] = []  # to go back to the pool with the idle ones
        self.scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()

    def schedule(self, give_back: typing.Callable[[_Lender], None]) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(give_back, self)


class AsyncpgExecutor:
    """Single-statement writes on the asyncpg connection; everything else through ``fallback``."""

    fast_path = True

    def __init__(self, engine: AsyncEngine, fallback: SqlAlchemyExecutor, json_params: typing.AbstractSet[str]) -> None:
        self.engine = engine
        self._sync = engine.sync_engine
        self._fallback = fallback
        self._json_params = json_params
        # By id() of the statement: `Statements` builds each once and keeps it as long as the storage.
        self._prepared: dict[int, Prepared] = {}
        self._lender: _Lender | None = None

    def prepared(self, statement: typing.Any) -> Prepared:
        """``statement`` compiled for the driver (once)."""
        prepared = self._prepared.get(id(statement))
        if prepared is None:
            prepared = self._prepared[id(statement)] = Prepared.compile(
                statement, self._sync.dialect, self._json_params
            )
        return prepared

    async def write(self, statement: typing.Any, params: Params) -> int:
        prepared = self.prepared(statement)
        try:
            args = prepared.arguments(params)
        except Exception as error:  # a value the JSON encoder refuses: what SQLAlchemy raises for it
            raise sa.exc.StatementError(
                f"({type(error).__module__}.{type(error).__qualname__}) {error}", prepared.sql, params, error,
                hide_parameters=self._sync.hide_parameters,
            ) from error
        status: str = await self._execute(prepared.sql, args)
        return int(status.rpartition(" ")[2] or 0)  # the command tag: UPDATE 1, INSERT 0 1

    async def fetch(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        """A write with ``RETURNING`` (or a ``SELECT`` over one) on the driver connection; asyncpg's records
        (`write` for statements that return rows)."""
        prepared = self.prepared(statement)
        try:
            args = prepared.arguments(params)
        except Exception as error:
            raise sa.exc.StatementError(
                f"({type(error).__module__}.{type(error).__qualname__}) {error}", prepared.sql, params, error,
                hide_parameters=self._sync.hide_parameters,
            ) from error
        rows: typing.Sequence[Row] = await self._execute(prepared.sql, args, fetch=True)
        return rows

    async def write_returning(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        self._give_back_idle()
        return await self._fallback.write_returning(statement, params)

    async def read(self, statement: typing.Any, params: Params) -> typing.Sequence[Row]:
        self._give_back_idle()
        return await self._fallback.read(statement, params)

    async def transaction(self, work: typing.Callable[[sa.Connection], T]) -> T:
        self._give_back_idle()
        return await self._fallback.transaction(work)

    async def write_then(self, first: typing.Any, params: Params, then: Then) -> bool:
        self._give_back_idle()
        return await self._fallback.write_then(first, params, then)

    async def close(self) -> None:
        lender, self._lender = self._lender, None
        if lender is not None:
            entries = lender.idle + lender.retired
            lender.idle.clear()
            lender.retired.clear()
            if entries:
                await greenlet_spawn(self._check_in_now, entries)
            if lender.tasks and lender.loop is asyncio.get_running_loop():
                await asyncio.gather(*lender.tasks, return_exceptions=True)
        await self._fallback.close()

    # -- running a statement --------------------------------------------------------------------------

    async def _execute(self, sql: str, args: list[typing.Any], fetch: bool = False) -> typing.Any:
        """``sql`` on a pooled connection's asyncpg connection; returns the command tag (its rows if ``fetch``)."""
        pool = self._sync.pool
        if not isinstance(pool, QueuePool):
            connection = await self.engine.raw_connection()
            try:
                driver: typing.Any = connection.driver_connection
                status = await (driver.fetch(sql, *args) if fetch else driver.execute(sql, *args))
            except BaseException as error:
                await self.failed(connection, pool, error, sql, args, None)
            await greenlet_spawn(connection.close)  # such a pool may close it: I/O, so in a greenlet
            return status
        loop = asyncio.get_running_loop()
        lender = self._lender
        if lender is None or lender.loop is not loop:
            lender = self._lender = _Lender(loop)
        idle = lender.idle
        now = loop.time()
        found: PoolProxiedConnection | None = None
        while idle:
            entry = idle.pop()
            if entry[1] is pool and entry[2] > now:
                found, until = entry[0], entry[2]
                break
            lender.retired.append(entry)  # lent for long enough, or its pool was disposed
        if found is None:
            if lender.retired:
                # Back to the pool first, so the checkout takes one of them rather than a new connection.
                self._return_lent(lender)
            found = await self.engine.raw_connection()
            until = now + _LEND_SECONDS
        connection = found
        try:
            driver = connection.driver_connection
            status = await (driver.fetch(sql, *args) if fetch else driver.execute(sql, *args))
        except BaseException as error:
            # Back to the pool with the idle ones too: none may be lent on past an error.
            lender.retired += idle
            idle.clear()
            lender.schedule(self._return_lent)
            await self.failed(connection, pool, error, sql, args, lender)
        idle.append((connection, pool, until))
        lender.schedule(self._return_lent)
        return status

    async def failed(
        self,
        connection: PoolProxiedConnection,
        pool: Pool,
        error: BaseException,
        sql: str,
        args: list[typing.Any],
        lender: _Lender | None,
    ) -> typing.NoReturn:
        """Do to ``connection`` (and the pool) what ``error`` calls for, then raise SQLAlchemy's error for it
        (also for group commit's batches, which run on connections of the same pool)."""
        if not isinstance(error, Exception):
            # Cancelled (or interrupted) with the statement perhaps in flight: the connection's state is unknown.
            connection.invalidate()
            raise error
        lost = _lost(error, connection.driver_connection)
        if lost:
            connection.invalidate(error)
            if self._sync.pool is pool:
                # A server restart or failover took the pool's other connections too: start afresh
                # (the idle ones are closed, the checked-out ones are not handed out again).
                await self.engine.dispose()
        elif lender is not None:
            lender.retired.append((connection, pool, 0.0))
        else:
            await greenlet_spawn(connection.close)
        raise _translate(error, sql, args, lost, self._sync.hide_parameters) from error

    # -- giving lent connections back ---------------------------------------------------------------------

    def _give_back_idle(self) -> None:
        """Before a call through SQLAlchemy: the connections lent to the writes go back to the pool now,
        so that call takes one of them rather than opening another."""
        lender = self._lender
        if lender is not None and (lender.idle or lender.retired) and lender.loop is asyncio.get_running_loop():
            self._return_lent(lender)

    def _return_lent(self, lender: _Lender) -> None:
        """A loop callback: give the pool back the connections lent but idle now (and the retired)."""
        lender.scheduled = False
        returning = lender.idle + lender.retired
        lender.idle.clear()
        lender.retired.clear()
        later = []
        current = self._sync.pool
        for entry in returning:
            # A checkin does I/O only when the pool closes the connection (an overflow connection
            # coming back to a full pool, or a disposed pool's): those are given back in a greenlet.
            if (
                entry[1] is current
                and isinstance(current, QueuePool)
                and (current.size() == 0 or current.checkedin() < current.size())
            ):
                with contextlib.suppress(Exception):  # (SQLAlchemy logs what fails in a checkin)
                    entry[0].close()
            else:
                later.append(entry)
        if later:
            task = lender.loop.create_task(greenlet_spawn(self._check_in_now, later))
            lender.tasks.add(task)
            task.add_done_callback(lender.tasks.discard)

    def _check_in_now(self, entries: list[_Lent]) -> None:
        """In a greenlet: give connections back to their pool, or close them if it was disposed."""
        for connection, pool, _ in entries:
            with contextlib.suppress(Exception):
                if pool is self._sync.pool:
                    connection.close()
                else:
                    connection.invalidate()


def _lost(error: Exception, driver: typing.Any) -> bool:
    """Whether ``error`` means the connection is gone (rather than the statement failed)."""
    if isinstance(error, (OSError, asyncpg.PostgresConnectionError)):
        return True
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and (sqlstate.startswith("08") or sqlstate in _GONE_SQLSTATES):
        return True
    # For instance asyncpg's InterfaceError "cannot perform operation: connection is closed".
    return bool(driver is None or driver.is_closed())


def _translate(
    error: Exception, sql: str, args: list[typing.Any], lost: bool, hide_parameters: bool
) -> sa.exc.DBAPIError:
    """SQLAlchemy's exception for asyncpg's ``error``."""
    params = tuple(args)
    if lost:
        return sa.exc.OperationalError(sql, params, error, hide_parameters=hide_parameters, connection_invalidated=True)
    if isinstance(error, asyncpg.IntegrityConstraintViolationError):
        return sa.exc.IntegrityError(sql, params, error, hide_parameters=hide_parameters)
    return sa.exc.DBAPIError(sql, params, error, hide_parameters=hide_parameters)
