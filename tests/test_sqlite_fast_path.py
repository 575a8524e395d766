"""SQLite's fast path: each write transaction is one call on the storage's writer thread (see
`cqrs.saga.storage.sqlalchemy._executors._sqlite`), with the same rows, errors and locking as through
SQLAlchemy, and the ``synchronous`` setting of docs/storage.md.

Driver calls are seen through public hooks: a ``sqlite3`` trace callback on the writer's connections
(what SQLite runs, on which thread), the event loop's ``call_soon_threadsafe`` (each call to a thread
comes back through it) and SQLAlchemy's ``before_cursor_execute`` (what goes through aiosqlite).
Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import typing
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import Lease, NewSaga, StepEntry
from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage
from cqrs.saga.storage.sqlalchemy._executors._sqlite import SqliteExecutor
from outbox_helpers import message

LEASE = 30.0


class Seen:
    """What one storage call did: statements on the writer (with their thread), thread hops, SQLAlchemy statements."""

    def __init__(self) -> None:
        self.writer: list[tuple[str, int]] = []
        self.hops = 0
        self.through_sqlalchemy: list[str] = []

    def statements(self) -> list[str]:
        return [" ".join(sql.split()[:2]) if sql.startswith("BEGIN") else sql.split(None, 1)[0]
                for sql, _ in self.writer]

    def threads(self) -> set[int]:
        return {thread for _, thread in self.writer}


def executor(storage: SqlAlchemySagaStorage) -> SqliteExecutor:
    assert isinstance(storage._executor, SqliteExecutor)
    return storage._executor


@contextlib.asynccontextmanager
async def watching(storage: SqlAlchemySagaStorage) -> typing.AsyncIterator[Seen]:
    seen = Seen()

    def trace(sql: str) -> None:
        seen.writer.append((sql, threading.get_ident()))

    def on_execute(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.through_sqlalchemy.append(statement)

    def trace_sqlalchemy_writes(conn: sa.Connection) -> None:
        driver = conn.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        driver.set_trace_callback(trace)

    # Both of the writer's connections: the direct writes', and that of the writes through SQLAlchemy Core.
    await executor(storage).on_writer(lambda connection: connection.set_trace_callback(trace))
    await executor(storage).transaction(trace_sqlalchemy_writes)
    loop = asyncio.get_running_loop()
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counting(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        seen.hops += 1
        return call_soon_threadsafe(*args, **kwargs)

    sa.event.listen(storage.engine.sync_engine, "before_cursor_execute", on_execute)
    loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
    try:
        yield seen
    finally:
        del loop.call_soon_threadsafe
        sa.event.remove(storage.engine.sync_engine, "before_cursor_execute", on_execute)
        await executor(storage).on_writer(lambda connection: connection.set_trace_callback(None))
        await executor(storage).transaction(
            lambda conn: typing.cast(sqlite3.Connection, conn.connection.driver_connection).set_trace_callback(None)
        )


@pytest.fixture
async def storage(sqlite_url: str) -> typing.AsyncIterator[SqlAlchemySagaStorage]:
    store = SqlAlchemySagaStorage.from_url(sqlite_url)
    await store.create_tables()
    yield store
    await store.close()


async def start(storage: SqlAlchemySagaStorage, *messages: typing.Any) -> tuple[uuid.UUID, Lease]:
    saga_id = uuid.uuid4()
    lease = await storage.start_saga(NewSaga(saga_id, "order", {"n": 0}, outbox=list(messages)), "runner-a", LEASE)
    assert lease is not None
    return saga_id, lease


def done(step: str, response: typing.Any = None) -> StepEntry:
    return StepEntry(step, "act", SagaStepStatus.COMPLETED, None, response)


async def test_the_fast_path_is_on_for_a_sqlite_file_from_url(storage: SqlAlchemySagaStorage) -> None:
    assert storage.fast_path
    assert not SqlAlchemySagaStorage(storage.engine, fast_path=False).fast_path


async def test_a_checkpoint_is_one_call_on_the_writer_thread_in_one_immediate_transaction(
    storage: SqlAlchemySagaStorage,
) -> None:
    saga_id, lease = await start(storage)
    async with watching(storage) as seen:
        assert await storage.checkpoint(
            saga_id, lease, entry=done("reserve", {"ok": True}), context={"n": 1}, lease_seconds=LEASE
        )
    assert seen.hops == 1
    assert seen.statements() == ["BEGIN IMMEDIATE", "UPDATE", "INSERT", "COMMIT"]
    assert len(seen.threads()) == 1 and threading.get_ident() not in seen.threads()
    assert seen.through_sqlalchemy == []
    history = await storage.get_step_history(saga_id)
    assert [(e.step_name, e.response) for e in history] == [("reserve", {"ok": True})]


async def test_a_start_a_renewal_and_a_release_are_one_statement_and_one_call_each(
    storage: SqlAlchemySagaStorage,
) -> None:
    async with watching(storage) as seen:
        saga_id, lease = await start(storage)
    assert (seen.hops, seen.statements()) == (1, ["INSERT"])  # autocommit: it takes the write lock itself
    for write in (storage.renew_lease(saga_id, lease, LEASE), storage.release_lease(saga_id, lease)):
        async with watching(storage) as seen:
            assert await write
        assert (seen.hops, seen.statements(), seen.through_sqlalchemy) == (1, ["UPDATE"], [])


async def test_a_fenced_checkpoint_writes_nothing_and_rolls_back(storage: SqlAlchemySagaStorage) -> None:
    saga_id, lease = await start(storage)
    stale = Lease(owner=lease.owner, epoch=lease.epoch + 1)
    async with watching(storage) as seen:
        assert not await storage.checkpoint(saga_id, stale, entry=done("late"), context={"n": 9}, lease_seconds=LEASE)
    assert seen.statements() == ["BEGIN IMMEDIATE", "UPDATE", "ROLLBACK"]
    record = await storage.get_saga(saga_id)
    assert record is not None and record.context == {"n": 0} and record.version == 1
    assert await storage.get_step_history(saga_id) == []


async def test_a_checkpoint_and_a_start_with_outbox_messages_are_one_call_each(storage: SqlAlchemySagaStorage) -> None:
    async with watching(storage) as seen:
        saga_id, lease = await start(storage, message("placed"))
    assert (seen.hops, seen.statements()) == (1, ["BEGIN IMMEDIATE", "INSERT", "INSERT", "COMMIT"])
    async with watching(storage) as seen:
        assert await storage.checkpoint(
            saga_id, lease, entry=done("one"), lease_seconds=LEASE, outbox=[message("a"), message("b")]
        )
    # The update, the log row, then one execution of the outbox insert per message.
    assert (seen.hops, seen.statements()) == (1, ["BEGIN IMMEDIATE", "UPDATE", "INSERT", "INSERT", "INSERT", "COMMIT"])
    assert seen.through_sqlalchemy == []
    assert [row.name for row in await storage.list_outbox()] == ["placed", "a", "b"]


async def test_claims_and_outbox_writes_are_one_call_each_on_the_same_writer_thread(
    storage: SqlAlchemySagaStorage,
) -> None:
    """The writes that go through SQLAlchemy Core (claims, RETURNING, expanding IN) run on the writer thread too,
    in a transaction that takes the write lock at its start; none goes through the storage engine's aiosqlite."""
    async with watching(storage) as seen:
        saga_id, lease = await start(storage, message("placed"))
    writer = seen.threads()
    assert await storage.release_lease(saga_id, lease)
    async with watching(storage) as seen:
        claim = await storage.claim_saga(saga_id, "runner-b", LEASE)
    assert claim is not None and claim.lease is not None
    # A granted claim is one UPDATE ... RETURNING with the history in it (json_group_array).
    assert (seen.hops, seen.statements()) == (1, ["BEGIN IMMEDIATE", "UPDATE", "COMMIT"])
    assert seen.threads() == writer and seen.through_sqlalchemy == []
    async with watching(storage) as seen:
        [row] = await storage.claim_outbox("relay", LEASE, limit=10)
    assert (seen.hops, seen.statements(), seen.threads()) == (1, ["BEGIN IMMEDIATE", "UPDATE", "COMMIT"], writer)
    async with watching(storage) as seen:
        assert await storage.mark_published("relay", [row.seq]) == 1  # IN (...): no fixed text
    assert (seen.hops, seen.statements(), seen.threads()) == (1, ["BEGIN IMMEDIATE", "UPDATE", "COMMIT"], writer)
    assert seen.through_sqlalchemy == []


async def test_a_taken_saga_id_starts_nothing_not_even_its_messages(storage: SqlAlchemySagaStorage) -> None:
    saga_id, _ = await start(storage, message("first"))
    again = NewSaga(saga_id, "order", {"n": 5}, outbox=[message("second")])
    async with watching(storage) as seen:
        assert await storage.start_saga(again, "runner-b", LEASE) is None
    assert seen.statements() == ["BEGIN IMMEDIATE", "INSERT", "ROLLBACK"]
    assert [row.name for row in await storage.list_outbox()] == ["first"]


async def test_a_failing_statement_is_sqlalchemys_error_rolls_back_and_the_writer_goes_on(
    storage: SqlAlchemySagaStorage,
) -> None:
    saga_id, lease = await start(storage)
    twice = message("twice")
    with pytest.raises(sa.exc.IntegrityError) as raised:
        await storage.checkpoint(saga_id, lease, entry=done("one"), context={"n": 1}, lease_seconds=LEASE,
                                 outbox=[twice, twice])
    assert isinstance(raised.value.orig, sqlite3.IntegrityError)
    record = await storage.get_saga(saga_id)
    assert record is not None and record.version == 1 and record.context == {"n": 0}  # the update went too
    assert await storage.get_step_history(saga_id) == []
    assert await storage.checkpoint(saga_id, lease, entry=done("one"), context={"n": 1}, lease_seconds=LEASE)
    assert [e.step_name for e in await storage.get_step_history(saga_id)] == ["one"]


async def test_a_value_json_cannot_encode_is_a_statement_error_before_anything_is_sent(
    storage: SqlAlchemySagaStorage,
) -> None:
    saga_id, lease = await start(storage)
    async with watching(storage) as seen:
        with pytest.raises(sa.exc.StatementError):
            await storage.checkpoint(saga_id, lease, entry=None, context={"n": object()}, lease_seconds=LEASE)
    assert (seen.hops, seen.writer) == (0, [])


async def test_the_fast_path_writes_the_rows_sqlalchemy_writes(sqlite_url: str, tmp_path: typing.Any) -> None:
    """The same calls through the fast path and through SQLAlchemy store the same text in every column
    (JSON as SQLAlchemy encodes it, ids as hex, timestamps as fixed-width UTC text)."""

    async def stored(fast_path: bool, path: str) -> list[tuple[typing.Any, ...]]:
        storage = SqlAlchemySagaStorage.from_url(f"sqlite+aiosqlite:///{path}", fast_path=fast_path)
        try:
            assert storage.fast_path is fast_path
            await storage.create_tables()
            saga_id = uuid.UUID(int=7)
            new = NewSaga(saga_id, "order", {"n": 0, "text": "é ü"}, correlation_id="c-1", trace_context={"t": "1"},
                          outbox=[message("placed", note="x")])
            lease = await storage.start_saga(new, "runner-a", LEASE)
            assert lease is not None
            assert await storage.checkpoint(saga_id, lease, entry=done("one", {"r": [1, None]}), context={"n": 1},
                                            lease_seconds=LEASE)
            assert await storage.checkpoint(saga_id, lease, entry=None, status=SagaStatus.COMPENSATING, error="boom",
                                            lease_seconds=LEASE)
            assert await storage.renew_lease(saga_id, lease, LEASE)
            assert await storage.checkpoint(saga_id, lease, entry=StepEntry("one", "compensate",
                                            SagaStepStatus.COMPENSATED, "undone"), status=SagaStatus.FAILED,
                                            lease_seconds=0, release=True)
            await storage.amend_saga(saga_id, context={"n": 2, "text": "é ü"}, entry=done("fix"))
            async with storage.engine.connect() as conn:
                rows = []
                for table, skip in (("saga_executions", {"created_at", "updated_at", "lease_expires_at"}),
                                    ("saga_log", {"created_at"}),
                                    ("saga_outbox", {"created_at", "message_id", "headers", "next_attempt_at"})):
                    result = await conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY rowid")
                    keys = list(result.keys())
                    for row in result:
                        rows.append(tuple((k, v) for k, v in zip(keys, row, strict=True) if k not in skip))
                return rows
        finally:
            await storage.close()

    fast = await stored(True, str(tmp_path / "fast.db"))
    slow = await stored(False, str(tmp_path / "slow.db"))
    assert fast == slow
    assert dict(fast[0])["context"] == '{"n": 2, "text": "\\u00e9 \\u00fc"}'  # SQLAlchemy's JSON text


async def test_a_write_waits_for_another_connections_lock_and_then_goes_through(
    storage: SqlAlchemySagaStorage, sqlite_url: str
) -> None:
    """As another process holding the write lock: the writer's BEGIN IMMEDIATE waits (busy timeout) until it
    commits, and then writes on top of what it committed."""
    saga_id, lease = await start(storage)
    began = asyncio.Event()
    loop = asyncio.get_running_loop()

    def trace(sql: str) -> None:
        if sql.startswith("BEGIN IMMEDIATE"):
            loop.call_soon_threadsafe(began.set)

    other = sqlite3.connect(sa.make_url(sqlite_url).database or "", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE saga_executions SET error = 'from the other process'")
        await executor(storage).on_writer(lambda connection: connection.set_trace_callback(trace))
        write = asyncio.ensure_future(
            storage.checkpoint(saga_id, lease, entry=done("one"), context={"n": 1}, lease_seconds=LEASE)
        )
        await began.wait()  # the writer's transaction has begun to wait for the lock
        assert not write.done()
        other.execute("COMMIT")
        assert await write
    finally:
        other.close()
        await executor(storage).on_writer(lambda connection: connection.set_trace_callback(None))
    record = await storage.get_saga(saga_id)
    assert record is not None and record.error == "from the other process" and record.context == {"n": 1}


async def test_two_storages_on_one_file_interleave_their_transactions(storage: SqlAlchemySagaStorage) -> None:
    """Two writers (as two processes have: each its own connection and thread) commit every checkpoint."""
    second = SqlAlchemySagaStorage.from_url(storage.engine.url)
    try:
        assert second.fast_path

        async def saga(store: SqlAlchemySagaStorage) -> uuid.UUID:
            saga_id, lease = await start(store)
            for step in range(5):
                assert await store.checkpoint(saga_id, lease, entry=done(f"s{step}"), context={"n": step},
                                              lease_seconds=LEASE)
            return saga_id

        ids = await asyncio.gather(*(saga(store) for store in (storage, second) for _ in range(8)))
        for saga_id in ids:
            assert [e.step_name for e in await storage.get_step_history(saga_id)] == [f"s{n}" for n in range(5)]
    finally:
        await second.close()


async def test_a_caller_that_stops_waiting_leaves_the_writer_working(storage: SqlAlchemySagaStorage) -> None:
    """A cancelled call that reached the writer runs all the same (as a statement in flight would); the writer
    goes on with the next calls."""
    saga_id, lease = await start(storage)
    write = asyncio.ensure_future(storage.renew_lease(saga_id, lease, 3600.0))
    await asyncio.sleep(0)  # the task runs up to its wait for the writer
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    assert await storage.checkpoint(saga_id, lease, entry=done("one"), lease_seconds=LEASE)
    assert [e.step_name for e in await storage.get_step_history(saga_id)] == ["one"]


async def test_close_ends_the_writer_thread_and_closes_its_connection(sqlite_url: str) -> None:
    storage = SqlAlchemySagaStorage.from_url(sqlite_url)
    await storage.create_tables()
    await start(storage)
    connections: list[sqlite3.Connection] = []
    await executor(storage).on_writer(connections.append)
    await executor(storage).transaction(
        lambda conn: connections.append(typing.cast(sqlite3.Connection, conn.connection.driver_connection))
    )
    writers = [t for t in threading.enumerate() if t.name.startswith("cqrs-sqlite-writer")]
    assert writers
    await storage.close()
    for thread in writers:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in writers)
    for connection in connections:
        with pytest.raises(sqlite3.ProgrammingError):  # closed
            connection.execute("SELECT 1")


async def test_a_write_made_while_close_waits_for_the_writer_uses_a_connection_of_its_own_thread(
    sqlite_url: str,
) -> None:
    """``close`` hands the writer thread its last call (closing its connections) behind the calls queued before it;
    a write made meanwhile goes to a new writer thread, which must open connections of its own rather than use
    the old thread's (``sqlite3`` refuses a connection from another thread, and the old thread is closing it)."""
    storage = SqlAlchemySagaStorage.from_url(sqlite_url)
    await storage.create_tables()
    saga_id, lease = await start(storage)
    gate = threading.Event()
    try:
        busy = asyncio.ensure_future(executor(storage).on_writer(lambda connection: gate.wait(10)))
        closing = asyncio.ensure_future(storage.close())
        await asyncio.sleep(0)  # close has queued its call behind the busy one and waits for it
        assert not closing.done()
        assert await storage.checkpoint(saga_id, lease, entry=done("one"), lease_seconds=LEASE)
        assert await storage.renew_lease(saga_id, lease, LEASE)
        assert await storage.claim_saga(saga_id, "runner-a", LEASE) is not None
        assert [e.step_name for e in await storage.get_step_history(saga_id)] == ["one"]
        new_writer = await executor(storage).on_writer(lambda connection: threading.current_thread())
        assert new_writer.is_alive()
    finally:
        gate.set()
        await asyncio.gather(busy, closing)
    # The close also ended the writer thread started while it waited (with its connections).
    assert not new_writer.is_alive()
    await storage.close()  # nothing left to close


async def test_a_call_on_the_writer_that_raises_stop_iteration_fails_its_caller_instead_of_leaving_it_waiting(
    sqlite_url: str,
) -> None:
    """A future refuses ``StopIteration``; the writer hands it back as a ``RuntimeError`` caused by it."""
    storage = SqlAlchemySagaStorage.from_url(sqlite_url)
    await storage.create_tables()

    def stops(connection: sqlite3.Connection) -> None:
        raise StopIteration("no more")

    try:
        with pytest.raises(RuntimeError, match="StopIteration") as raised:
            await asyncio.wait_for(executor(storage).on_writer(stops), 10)
        assert isinstance(raised.value.__cause__, StopIteration)
        assert await executor(storage).on_writer(lambda connection: 1) == 1  # the thread goes on
    finally:
        await storage.close()


# -- synchronous ---------------------------------------------------------------------------------------------


async def pragmas(storage: SqlAlchemySagaStorage) -> tuple[int, int, tuple[int, str, int]]:
    """``synchronous`` on a SQLAlchemy connection and on the writer's, and the writer's busy timeout, journal
    mode and foreign keys."""
    async with storage.engine.connect() as conn:
        through_sqlalchemy = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()

    def on_writer(connection: sqlite3.Connection) -> tuple[int, tuple[int, str, int]]:
        settings = tuple(connection.execute(f"PRAGMA {name}").fetchone()[0]
                         for name in ("busy_timeout", "journal_mode", "foreign_keys"))
        return connection.execute("PRAGMA synchronous").fetchone()[0], typing.cast(tuple[int, str, int], settings)

    writer, settings = await executor(storage).on_writer(on_writer)
    assert isinstance(through_sqlalchemy, int)
    return through_sqlalchemy, writer, settings


async def test_synchronous_is_full_by_default_on_every_connection(storage: SqlAlchemySagaStorage) -> None:
    assert await pragmas(storage) == (2, 2, (30000, "wal", 1))  # FULL


@pytest.mark.parametrize("value", ["normal", "NORMAL"])
async def test_synchronous_normal_is_asked_for_in_the_url(sqlite_url: str, value: str) -> None:
    storage = SqlAlchemySagaStorage.from_url(f"{sqlite_url}?synchronous={value}")
    try:
        await storage.create_tables()
        assert storage.engine.url.query == {}  # ours: SQLAlchemy and the driver never see it
        assert await pragmas(storage) == (1, 1, (30000, "wal", 1))  # NORMAL
        saga_id, lease = await start(storage)
        assert await storage.checkpoint(saga_id, lease, entry=done("one"), lease_seconds=LEASE)
    finally:
        await storage.close()


@pytest.mark.parametrize("value", ["off", "extra", "2"])
def test_other_synchronous_values_are_refused(sqlite_url: str, value: str) -> None:
    with pytest.raises(ValueError, match="synchronous must be one of full, normal"):
        SqlAlchemySagaStorage.from_url(f"{sqlite_url}?synchronous={value}")


async def test_synchronous_full_is_kept_through_sqlalchemy_too(sqlite_url: str) -> None:
    storage = SqlAlchemySagaStorage.from_url(f"{sqlite_url}?synchronous=full", fast_path=False)
    try:
        assert not storage.fast_path
        async with storage.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 2
    finally:
        await storage.close()


# -- where the fast path is not used --------------------------------------------------------------------------


async def test_an_in_memory_database_writes_through_sqlalchemy() -> None:
    storage = SqlAlchemySagaStorage.from_url("sqlite+aiosqlite://")
    try:
        assert not storage.fast_path
        await storage.create_tables()
        saga_id, lease = await start(storage)
        assert await storage.checkpoint(saga_id, lease, entry=done("one"), lease_seconds=LEASE)
        assert [e.step_name for e in await storage.get_step_history(saga_id)] == ["one"]
    finally:
        await storage.close()


async def test_an_engine_of_your_own_writes_through_sqlalchemy_unless_asked(sqlite_url: str) -> None:
    """Its connect events would not run on the fast path's own connection: off, said at INFO; on when asked."""
    from log_capture import capturing

    engine = create_async_engine(sqlite_url, connect_args={"timeout": 30})
    try:
        with capturing("cqrs.saga.storage") as logged:
            mine = SqlAlchemySagaStorage(engine)
        assert not mine.fast_path
        [info] = logged.records
        assert info.levelname == "INFO" and "from_url" in info.getMessage() and "fast_path=True" in info.getMessage()
        await mine.create_tables()
        asked = SqlAlchemySagaStorage(engine, fast_path=True)
        try:
            assert asked.fast_path
            saga_id, lease = await start(asked)
            assert await asked.checkpoint(saga_id, lease, entry=done("one"), lease_seconds=LEASE)
            assert [e.step_name for e in await mine.get_step_history(saga_id)] == ["one"]
        finally:
            await asked.close()
    finally:
        await engine.dispose()
