"""The SQL outbox's own properties: one statement and one commit per checkpoint, its plans, and atomicity when the
database fails mid-checkpoint (a connection killed after the saga row was updated, before the messages were in)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import re
import typing
import uuid

import pytest
import sqlalchemy as sa

from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage
from cqrs.saga.storage.sqlalchemy._executors._asyncpg import Prepared
from cqrs.saga.storage.sqlalchemy._outbox_schema import saga_outbox
from cqrs.saga.storage.sqlalchemy._statements import Statements
from outbox_helpers import LEASE, done, kind, message, names, open_storage, outbox_count, started


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
            pytest.param("mariadb", marks=pytest.mark.mariadb)]
)
def sql_url(request: pytest.FixtureRequest) -> str:
    """A fresh SQLite, PostgreSQL, MariaDB database in turn (a sync fixture: the database fixtures run their own
    event loop)."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def sql(sql_url: str) -> typing.AsyncIterator[SqlAlchemySagaStorage]:
    storage = await open_storage(sql_url)
    assert isinstance(storage, SqlAlchemySagaStorage)
    yield storage
    await storage.close()


@pytest.fixture
async def pg(postgres_url: str) -> typing.AsyncIterator[SqlAlchemySagaStorage]:
    storage = await open_storage(postgres_url)
    assert isinstance(storage, SqlAlchemySagaStorage)
    yield storage
    await storage.close()


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def transactional_url(request: pytest.FixtureRequest) -> str:
    """SQLite and MariaDB: a checkpoint is a transaction of several statements there."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture(
    params=[pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("mariadb", marks=pytest.mark.mariadb)]
)
def row_lock_url(request: pytest.FixtureRequest) -> str:
    """PostgreSQL and MariaDB: a checkpoint can wait for a row lock inside its statement or transaction."""
    return str(request.getfixturevalue(f"{request.param}_url"))


async def pg_commits(sql: SqlAlchemySagaStorage) -> int:
    """PostgreSQL's own count of committed transactions in the storage's database (see test_storage_contract)."""
    import asyncpg

    await asyncio.sleep(0)  # a connection lent to the fast path's writes goes back to the pool
    async with sql.engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.exec_driver_sql("SELECT pg_stat_force_next_flush()")
    url = sql.engine.url
    admin = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database="postgres")
    try:
        return int(await admin.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", url.database))
    finally:
        await admin.close()


@contextlib.contextmanager
def statements_seen(sql: SqlAlchemySagaStorage) -> typing.Iterator[list[str]]:
    """Every statement sent on connections opened from here on: asyncpg's query logger (the fast path) and
    SQLAlchemy's ``before_cursor_execute`` (everything else)."""
    sent: list[str] = []

    def on_connect(dbapi_connection: typing.Any, record: object) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda query: sent.append(query.query))

    def on_execute(conn: sa.Connection, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement)

    pool, engine = sql.engine.sync_engine.pool, sql.engine.sync_engine
    if kind(sql) == "postgresql":
        sa.event.listen(pool, "connect", on_connect)
    sa.event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield sent
    finally:
        if kind(sql) == "postgresql":
            sa.event.remove(pool, "connect", on_connect)
        sa.event.remove(engine, "before_cursor_execute", on_execute)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "sqlalchemy"])
async def test_on_postgresql_a_start_and_a_checkpoint_with_messages_are_one_statement_each(
    postgres_url: str, fast_path: bool
) -> None:
    storage = await open_storage(postgres_url, fast_path=fast_path)
    assert isinstance(storage, SqlAlchemySagaStorage)
    try:
        await started(storage, message("warm-up"))  # the statements prepared, the pool's connection open
        await storage.engine.dispose()
        with statements_seen(storage) as sent:
            before = await pg_commits(storage)
            sent.clear()
            saga_id, lease = await started(storage, message("placed"))
            assert await storage.checkpoint(
                saga_id, lease, entry=done("one"), context={"n": 1}, lease_seconds=LEASE,
                outbox=[message("one-a"), message("one-b")],
            )
            assert await storage.checkpoint(saga_id, lease, entry=None, lease_seconds=LEASE, outbox=[message("two")])
            await asyncio.sleep(0)  # asyncpg hands records to its loggers on the loop's next iteration
            writes = [" ".join(s.split()) for s in sent if not s.startswith("SELECT pg_stat")]
            assert await pg_commits(storage) - before == 3 + 1  # (+ the statistics flush's own)
        assert len(writes) == 3, writes
        assert writes[0].startswith("WITH u AS (INSERT INTO saga_executions")
        assert writes[1].startswith("WITH u AS (UPDATE saga_executions") and "l AS (INSERT INTO saga_log" in writes[1]
        assert "INSERT INTO saga_outbox" in writes[1] and "jsonb_to_recordset" in writes[1]
        assert writes[2].startswith("WITH u AS (UPDATE saga_executions") and "saga_log" not in writes[2]
        assert not [w for w in writes if w.split(None, 1)[0].upper() in ("BEGIN", "START", "COMMIT")]
        assert await names(storage, saga_id=saga_id) == ["placed", "one-a", "one-b", "two"]
    finally:
        await storage.close()


async def test_on_sqlite_and_mysql_a_checkpoint_with_messages_is_one_transaction(transactional_url: str) -> None:
    # Through SQLAlchemy, whose commit event counts; SQLite's fast path is counted in test_sqlite_fast_path.
    sql = await open_storage(transactional_url, fast_path=False)
    assert isinstance(sql, SqlAlchemySagaStorage)
    commits: list[object] = []

    def committed(conn: object) -> None:
        commits.append(conn)

    sa.event.listen(sql.engine.sync_engine, "commit", committed)
    try:
        saga_id, lease = await started(sql, message("placed"), message("also"))
        assert len(commits) == 1
        assert await sql.checkpoint(
            saga_id, lease, entry=done("one"), lease_seconds=LEASE, outbox=[message("a"), message("b")]
        )
        assert len(commits) == 2
        assert await names(sql) == ["placed", "also", "a", "b"]
    finally:
        sa.event.remove(sql.engine.sync_engine, "commit", committed)
        await sql.close()


async def test_postgresql_plans_the_outbox_queries_on_their_indexes(pg: SqlAlchemySagaStorage) -> None:
    sql = pg
    saga_id, _ = await started(sql, message("first"))
    # A table as it looks after a while: mostly published rows, some pending, statistics up to date.
    async with sql.engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO saga_outbox (message_id, saga_id, topic, name, payload, headers, status, attempts,"
            " created_at, published_at)"
            " SELECT gen_random_uuid(), gen_random_uuid(), 't', 'n', '{}'::jsonb, '{}'::jsonb,"
            " CASE WHEN g % 50 = 0 THEN 'pending' ELSE 'published' END, 0, now(),"
            " CASE WHEN g % 50 = 0 THEN NULL ELSE now() - make_interval(secs => g) END"
            " FROM generate_series(1, 20000) AS g"
        )
    async with sql.engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.exec_driver_sql("ANALYZE saga_outbox")
    osql = sql._sql.outbox
    cases: list[tuple[list[str | tuple[str, ...]], typing.Any, dict[str, typing.Any]]] = [
        (["ix_saga_outbox_status_seq", "ix_saga_outbox_saga_id_seq"], osql.claim(),
         {"b_owner": "r", "b_lease_seconds": 1.0, "b_limit": 10}),
        (["ix_saga_outbox_status_seq"], osql.backlog, {}),
        (["ix_saga_outbox_status_seq"], osql.list(True, False), {"b_outbox_status": "parked", "b_limit": 10}),
        (["ix_saga_outbox_saga_id_seq"], osql.list(False, True), {"b_saga_id": saga_id, "b_limit": 10}),
        (["ux_saga_outbox_message_id"], osql.requeue, {"b_message_id": uuid.uuid4()}),
        (["ix_saga_outbox_status_published"], osql.purge, {"b_older": 60.0, "b_limit": 10}),
        # By seq: the primary key, or (status, seq) with both conditions.
        ([("saga_outbox_pkey", "ix_saga_outbox_status_seq")], osql.mark_published, {"b_owner": "r", "b_seqs": [1, 2]}),
        ([("saga_outbox_pkey", "ix_saga_outbox_status_seq")], osql.park, {"b_owner": "r", "b_seq": 1, "b_error": "e"}),
    ]
    async with sql.engine.connect() as conn:
        await conn.exec_driver_sql("SET enable_seqscan = off")
        for indexes, statement, params in cases:
            prepared = Prepared.compile(statement, sql.engine.dialect, sql._sql.json_params)
            rows = await conn.exec_driver_sql(f"EXPLAIN {prepared.sql}", tuple(prepared.arguments(params)))
            plan = "\n".join(row[0] for row in rows)
            for index in indexes:
                alternatives = (index,) if isinstance(index, str) else index
                assert any(re.search(rf"Scan (using|on) {i}\b", plan) for i in alternatives), (
                    f"{index} not used:\n{prepared.sql}\n{plan}"
                )
        await conn.rollback()


def test_checkpoints_without_messages_are_the_statements_they_always_were() -> None:
    """A checkpoint without outbox rows costs nothing more: on every dialect and for every shape its statement
    is the one it was before the outbox (the same cached object, no outbox table in it)."""
    for dialect in ("postgresql", "sqlite", "mysql"):
        sql = Statements(dialect)
        for shape in itertools.product((False, True), repeat=5):
            plain = sql.checkpoint(*shape)
            assert sql.checkpoint(*shape, outbox=False) is plain
            assert "saga_outbox" not in str(plain)
            with_rows = sql.checkpoint(*shape, outbox=True)
            assert (with_rows is plain) == (dialect != "postgresql")  # elsewhere the rows join its transaction
        assert "saga_outbox" not in str(sql.start)


# -- a database failure in the middle of a checkpoint --------------------------------------------------


async def backend_id(conn: typing.Any, dialect: str) -> int:
    query = "SELECT pg_backend_pid()" if dialect == "postgresql" else "SELECT CONNECTION_ID()"
    return int((await conn.exec_driver_sql(query)).scalar_one())


async def waiting_backends(admin: typing.Any, dialect: str, exclude: int) -> list[int]:
    """The connections of this database waiting for a lock (other than ``exclude``)."""
    if dialect == "postgresql":
        query = (
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            f" AND pid <> {exclude}"
        )
    else:
        query = (
            "SELECT trx_mysql_thread_id FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
            f" AND trx_mysql_thread_id <> {exclude}"
        )
    return [int(row[0]) for row in (await admin.exec_driver_sql(query)).all()]


async def test_a_checkpoint_killed_after_its_update_leaves_no_row_and_no_change(row_lock_url: str) -> None:
    """The checkpoint updates the saga row and appends its log row, then waits to insert its message (another
    transaction holds the message id, uncommitted); its connection is killed there. Nothing of it remains: the
    saga row, the log and the outbox are as before, and the checkpoint succeeds when tried again. (SQLite has
    one writer: no checkpoint waits inside its transaction there; test_outbox_storage fails one midway.)"""
    sql = await open_storage(row_lock_url)
    assert isinstance(sql, SqlAlchemySagaStorage)
    try:
        await checkpoint_killed_after_its_update(sql)
    finally:
        await sql.close()


async def checkpoint_killed_after_its_update(sql: SqlAlchemySagaStorage) -> None:
    dialect = kind(sql)
    saga_id, lease = await started(sql)
    before = await sql.get_saga(saga_id)
    blocking = message("blocking")
    other = SqlAlchemySagaStorage.from_url(sql.engine.url)
    try:
        async with other.engine.connect() as holder, other.engine.connect() as admin:
            admin = await admin.execution_options(isolation_level="AUTOCOMMIT")
            await holder.execute(
                sa.insert(saga_outbox).values(
                    message_id=blocking.message_id, saga_id=uuid.uuid4(), topic="t", name="other", payload={},
                    headers={}, status="pending", attempts=0, created_at=datetime.datetime.now(datetime.timezone.utc),
                )
            )
            holder_id = await backend_id(holder, dialect)
            checkpoint = asyncio.ensure_future(
                sql.checkpoint(
                    saga_id, lease, entry=done("reserve"), context={"n": 1}, lease_seconds=LEASE,
                    outbox=[message("first"), blocking],
                )
            )
            deadline = asyncio.get_running_loop().time() + 30
            while not (waiting := await waiting_backends(admin, dialect, holder_id)):
                assert not checkpoint.done(), checkpoint
                assert asyncio.get_running_loop().time() < deadline, "the checkpoint never waited for the lock"
                # InnoDB refreshes its INFORMATION_SCHEMA cache only when it was last read over 0.1 s ago.
                await asyncio.sleep(0.01 if dialect == "postgresql" else 0.15)
            [victim] = waiting
            kill = f"SELECT pg_terminate_backend({victim})" if dialect == "postgresql" else f"KILL {victim}"
            await admin.exec_driver_sql(kill)
            with pytest.raises(sa.exc.DBAPIError):
                await asyncio.wait_for(checkpoint, 30)
            await holder.rollback()
    finally:
        await other.close()

    assert await outbox_count(sql) == 0
    assert await sql.get_history(saga_id) == []
    assert await sql.get_saga(saga_id) == before
    assert await sql.checkpoint(
        saga_id, lease, entry=done("reserve"), context={"n": 1}, lease_seconds=LEASE,
        outbox=[message("first"), blocking],
    )
    assert await names(sql) == ["first", "blocking"]


# -- the table --------------------------------------------------------------------------------


async def test_the_outbox_table_and_its_indexes_are_created(sql: SqlAlchemySagaStorage) -> None:

    def inspect(conn: sa.Connection) -> dict[str, tuple[list[str], bool]]:
        found = sa.inspect(conn).get_indexes("saga_outbox")
        return {ix["name"]: ([c for c in ix["column_names"] if c], bool(ix["unique"])) for ix in found if ix["name"]}

    async with sql.engine.connect() as conn:
        indexes = await conn.run_sync(inspect)
    assert indexes == {
        "ix_saga_outbox_status_seq": (["status", "seq"], False),
        "ix_saga_outbox_saga_id_seq": (["saga_id", "seq"], False),
        "ux_saga_outbox_message_id": (["message_id"], True),
        "ix_saga_outbox_status_published": (["status", "published_at"], False),
    }


async def test_on_sqlite_seqs_are_never_reused(sqlite_url: str) -> None:
    """SQLite would reuse the largest rowid of a table without AUTOINCREMENT."""
    sql = await open_storage(sqlite_url)
    await started(sql, message("first"))
    [row] = await sql.claim_outbox("relay", LEASE, limit=1)
    await sql.mark_published("relay", [row.seq])
    assert await sql.purge_outbox(older_than=datetime.timedelta(0)) == 1
    await started(sql, message("second"))
    [again] = await sql.list_outbox()
    assert again.seq > row.seq
    await sql.close()
