"""Schema versions: foreign tables refused before any write, earlier schemas upgraded with their rows, drift.

On SQLite, PostgreSQL and MariaDB. python-cqrs's tables are built as python-cqrs
4.15.1 builds them (tests/schema_history.py).
"""

from __future__ import annotations

import datetime
import typing
import uuid

import pytest
import sqlalchemy as sa
from tests.schema_history import first_schema, old_tables, python_cqrs_tables, second_schema, snapshot

from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import NewSaga, StepEntry
from cqrs.saga.storage.sqlalchemy import SCHEMA_VERSION, SchemaError, SqlAlchemySagaStorage

BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]
SAGA_ID = uuid.UUID("6f1b8a52-4c3e-4a59-9d0e-2a7c5b1e9f00")


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


async def run(storage: SqlAlchemySagaStorage, work: typing.Callable[[sa.Connection], typing.Any]) -> typing.Any:
    async with storage.engine.begin() as conn:
        return await conn.run_sync(work)


def insert_old_saga(conn: sa.Connection) -> None:
    """One compensated-then-failed saga with three log rows, as an earlier version wrote it."""
    executions, log = old_tables(conn)
    now = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)
    conn.execute(sa.insert(executions).values(
        id=SAGA_ID, name="OrderSaga", definition_version=1, status="compensation_failed", context={"order": 7},
        version=4, correlation_id="corr-1", owner=None, lease_epoch=2, lease_expires_at=None, recovery_attempts=1,
        error="boom", created_at=now, updated_at=now,
    ))
    for step, action, status in [("reserve", "act", "completed"), ("pay", "act", "failed"),
                                 ("reserve", "compensate", "failed")]:
        conn.execute(sa.insert(log).values(
            saga_id=SAGA_ID, step_name=step, action=action, status=status, details=None, response={"ok": 1},
            created_at=now,
        ))


async def test_python_cqrs_tables_are_refused_before_any_write(url: str) -> None:
    storage = SqlAlchemySagaStorage.from_url(url)
    try:
        await run(storage, python_cqrs_tables)
        before = await run(storage, snapshot)
        with pytest.raises(SchemaError) as refused:
            await storage.create_tables()
        message = str(refused.value)
        assert "python-cqrs's saga_executions, with its saga_logs" in message
        assert "without cqrs-saga's" in message and "definition_version" in message
        assert "Nothing was written" in message and "another database" in message
        assert await run(storage, snapshot) == before == {"saga_executions": 0, "saga_logs": 0}
        with pytest.raises(SchemaError):
            await storage.upgrade_schema()
        assert await run(storage, snapshot) == before
        report = await storage.check_schema()
        assert report.state == "foreign" and not report.ok
    finally:
        await storage.close()


@pytest.fixture(
    params=[
        ("sqlite", first_schema),
        ("sqlite", second_schema),
        pytest.param(("postgres", first_schema), marks=pytest.mark.postgres),
        pytest.param(("postgres", second_schema), marks=pytest.mark.postgres),
        # Schema 1 never ran on MySQL/MariaDB: the storage took them from schema 2 on.
        pytest.param(("mariadb", second_schema), marks=pytest.mark.mariadb),
    ],
    ids=["sqlite-first", "sqlite-second", "postgres-first", "postgres-second", "mariadb-first"],
)
def earlier(request: pytest.FixtureRequest) -> tuple[str, typing.Any]:
    """A fresh database's URL and an earlier schema to build in it (a sync fixture: see conftest)."""
    backend, schema = request.param
    return str(request.getfixturevalue(f"{backend}_url")), schema


async def test_an_earlier_schema_is_refused_then_upgraded_with_its_rows(earlier: tuple[str, typing.Any]) -> None:
    url, schema = earlier
    storage = SqlAlchemySagaStorage.from_url(url)
    try:
        await run(storage, schema)
        await run(storage, insert_old_saga)
        old = await storage.check_schema()
        assert (old.state, old.version, old.recorded) == ("older", 1 if schema is first_schema else 2, None)
        before = await run(storage, snapshot)
        with pytest.raises(SchemaError, match=r"schema version \d, from an earlier cqrs-saga.*cqrs-saga db upgrade"):
            await storage.create_tables()
        assert await run(storage, snapshot) == before

        was, now = await storage.upgrade_schema()
        assert was.version == old.version
        assert now.ok and now.version == now.recorded == SCHEMA_VERSION, now.lines()
        record = await storage.get_saga(SAGA_ID)
        assert record is not None
        assert (record.status, record.context, record.version, record.correlation_id, record.trace_context) == (
            SagaStatus.COMPENSATION_FAILED, {"order": 7}, 4, "corr-1", None,
        )
        history = await storage.get_history(SAGA_ID)
        assert history is not None
        assert [(e.step_name, e.action, e.status, e.response) for e in history] == [
            ("reserve", "act", SagaStepStatus.COMPLETED, {"ok": 1}),
            ("pay", "act", SagaStepStatus.FAILED, {"ok": 1}),
            ("reserve", "compensate", SagaStepStatus.FAILED, {"ok": 1}),
        ]
        # The upgraded tables work: a new log row gets the next seq, purge deletes with the log.
        assert await storage.amend_saga(
            SAGA_ID, status=SagaStatus.FAILED, entry=StepEntry("reserve", "compensate", SagaStepStatus.COMPENSATED)
        )
        history = await storage.get_history(SAGA_ID)
        assert history is not None and history[-1].seq > history[-2].seq
        await storage.create_tables()  # now a no-op
        assert await storage.purge_sagas(older_than=datetime.timedelta(0)) == 1
        assert await storage.get_history(SAGA_ID) is None
    finally:
        await storage.close()


async def test_create_records_the_version_and_check_reports_drift(url: str) -> None:
    storage = SqlAlchemySagaStorage.from_url(url)
    try:
        assert (await storage.check_schema()).state == "empty"
        await storage.create_tables()
        report = await storage.check_schema()
        assert report.ok and report.recorded == SCHEMA_VERSION
        await storage.create_tables()  # idempotent

        def drift(conn: sa.Connection) -> None:
            conn.exec_driver_sql(
                "DROP INDEX ix_saga_executions_name_created"
                + (" ON saga_executions" if conn.dialect.name in ("mysql", "mariadb") else "")
            )
            conn.exec_driver_sql("ALTER TABLE saga_log ADD COLUMN extra INTEGER")

        await run(storage, drift)
        report = await storage.check_schema()
        assert not report.ok
        assert "index ix_saga_executions_name_created is missing" in report.drift
        assert "column saga_log.extra is not cqrs-saga's" in report.drift
        _, after = await storage.upgrade_schema()  # puts the missing index back; leaves foreign columns alone
        assert after.drift == ("column saga_log.extra is not cqrs-saga's",)
    finally:
        await storage.close()


async def test_current_tables_from_before_versions_were_recorded_get_recorded(sqlite_url: str) -> None:
    storage = SqlAlchemySagaStorage.from_url(sqlite_url)
    try:
        await storage.create_tables()
        await run(storage, lambda conn: conn.exec_driver_sql("DROP TABLE cqrs_saga_schema"))
        report = await storage.check_schema()
        assert (report.state, report.version, report.recorded, report.ok) == ("current", SCHEMA_VERSION, None, True)
        assert "not recorded" in report.lines()[0]
        await storage.create_tables()
        assert (await storage.check_schema()).recorded == SCHEMA_VERSION
    finally:
        await storage.close()


async def test_schema_3_without_the_outbox_table_is_upgraded_to_4_keeping_its_sagas(storage_url: str) -> None:
    if storage_url == "memory://":
        pytest.skip("a property of the SQL storage")
    storage = SqlAlchemySagaStorage.from_url(storage_url)
    try:
        await storage.create_tables()
        lease = await storage.start_saga(NewSaga(uuid.uuid4(), "order", {"n": 1}), "runner", 30.0)
        assert lease is not None
        await run(storage, lambda conn: conn.exec_driver_sql("DROP TABLE saga_outbox"))
        await run(storage, lambda conn: conn.exec_driver_sql("UPDATE cqrs_saga_schema SET version = 3"))
        before = await storage.check_schema()
        assert (before.state, before.version, before.recorded) == ("older", 3, 3)
        with pytest.raises(SchemaError, match="schema version 3"):
            await storage.create_tables()

        _, after = await storage.upgrade_schema()

        assert after.ok and after.version == after.recorded == SCHEMA_VERSION == 4, after.lines()
        assert len(await storage.list_sagas()) == 1
        assert await storage.outbox_backlog() == 0
    finally:
        await storage.close()


async def test_a_newer_schema_is_refused(sqlite_url: str) -> None:
    storage = SqlAlchemySagaStorage.from_url(sqlite_url)
    try:
        await storage.create_tables()
        await run(storage, lambda conn: conn.exec_driver_sql("UPDATE cqrs_saga_schema SET version = 99"))
        with pytest.raises(SchemaError, match="schema version 99, written by a newer cqrs-saga"):
            await storage.create_tables()
        with pytest.raises(SchemaError, match="newer"):
            await storage.upgrade_schema()
    finally:
        await storage.close()
