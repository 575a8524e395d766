"""The storage behaviour python-cqrs users' code and tests lean on (issue 12, point 7), on every storage.

python-cqrs's storage methods (`create_saga`, `update_context`, `log_step`,
`load_saga_state`, `get_step_history`, `get_sagas_for_recovery`, ...) behave
as there: an unknown id's history is ``[]``, a not-found saga is a
``ValueError``, a stale ``update_context`` raises
``cqrs.dispatcher.exceptions.SagaConcurrencyError``, and `recover_saga`
resumes a saga whose history was written with ``log_step`` (no stored
responses). Memory, SQLite, PostgreSQL and MariaDB alike.
"""

from __future__ import annotations

import dataclasses
import datetime
import typing
import uuid

import di
import pytest

from cqrs.dispatcher.exceptions import SagaConcurrencyError
from cqrs.response import Response
from cqrs.saga.models import SagaContext
from cqrs.saga.recovery import recover_saga
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.saga.storage.models import SagaLogEntry
from cqrs.saga.storage.protocol import SagaStorage


@pytest.fixture
async def storage(storage_url: str) -> typing.AsyncIterator[SagaStorage]:
    """A fresh, empty storage of each kind: memory, SQLite, PostgreSQL, MariaDB."""
    if storage_url == "memory://":
        store: SagaStorage = MemorySagaStorage()
    else:
        from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

        sql = SqlAlchemySagaStorage.from_url(storage_url)
        await sql.create_tables()
        store = sql
    yield store
    await store.close()


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    reservation_id: str | None = None
    payment_id: str | None = None


class Reserved(Response):
    reservation_id: str
    items: list[str]


class Charged(Response):
    payment_id: str


RAN: list[str] = []


class Reserve(SagaStepHandler[OrderContext, Reserved]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reserved]:
        RAN.append("Reserve")
        context.reservation_id = "r-new"
        return self._generate_step_result(Reserved(reservation_id="r-new", items=["a"]))


class Charge(SagaStepHandler[OrderContext, Charged]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Charged]:
        RAN.append("Charge")
        context.payment_id = f"p-for-{context.reservation_id}"
        return self._generate_step_result(Charged(payment_id=context.payment_id))


class OrderSaga(Saga[OrderContext]):
    steps = [Reserve, Charge]


@pytest.fixture(autouse=True)
def clean_ran() -> typing.Iterator[None]:
    RAN.clear()
    yield
    RAN.clear()


# -- unknown ids -----------------------------------------------------------------------------------


async def test_the_history_of_an_unknown_saga_is_empty(storage: SagaStorage) -> None:
    assert await storage.get_step_history(uuid.uuid4()) == []


async def test_a_saga_that_is_not_stored_is_a_value_error(storage: SagaStorage) -> None:
    unknown = uuid.uuid4()
    with pytest.raises(ValueError, match=str(unknown)):
        await storage.load_saga_state(unknown)
    with pytest.raises(ValueError):
        await storage.load_saga_state(unknown, read_for_update=True)
    with pytest.raises(ValueError):
        await storage.update_status(unknown, SagaStatus.RUNNING)
    with pytest.raises(ValueError):
        await storage.update_context(unknown, {"order_id": "1"})
    with pytest.raises(ValueError):
        await storage.log_step(unknown, "Reserve", "act", SagaStepStatus.COMPLETED)
    with pytest.raises(ValueError):
        await storage.increment_recovery_attempts(unknown)
    with pytest.raises(ValueError):
        await storage.set_recovery_attempts(unknown, 2)


# -- python-cqrs's storage methods ------------------------------------------------------------------


async def test_create_update_and_load_a_saga_the_python_cqrs_way(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id=saga_id, name="OrderSaga", context={"order_id": "1"})
    assert await storage.load_saga_state(saga_id) == (SagaStatus.PENDING, {"order_id": "1"}, 1)
    with pytest.raises(ValueError):
        await storage.create_saga(saga_id=saga_id, name="OrderSaga", context={})

    await storage.update_status(saga_id, SagaStatus.RUNNING)
    status, _, version = await storage.load_saga_state(saga_id, read_for_update=True)
    assert (status, version) == (SagaStatus.RUNNING, 2)
    assert str(status) == "running" and status == "running"

    await storage.update_context(saga_id, {"order_id": "1", "reservation_id": "r"}, current_version=version)
    assert await storage.load_saga_state(saga_id) == (
        SagaStatus.RUNNING, {"order_id": "1", "reservation_id": "r"}, version + 1,
    )
    await storage.update_context(saga_id, {"order_id": "1", "reservation_id": "r2"})  # no version: unconditional
    assert (await storage.load_saga_state(saga_id))[1]["reservation_id"] == "r2"


async def test_a_stale_context_update_raises_python_cqrs_concurrency_error(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id=saga_id, name="OrderSaga", context={"order_id": "1"})
    _, context, version = await storage.load_saga_state(saga_id)
    await storage.update_context(saga_id, {**context, "payment_id": "first"}, current_version=version)
    with pytest.raises(SagaConcurrencyError):
        await storage.update_context(saga_id, {**context, "payment_id": "second"}, current_version=version)
    assert (await storage.load_saga_state(saga_id))[1]["payment_id"] == "first"


async def test_log_step_rows_read_back_as_python_cqrs_log_entries(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id=saga_id, name="OrderSaga", context={"order_id": "1"})
    await storage.log_step(saga_id, "Reserve", "act", SagaStepStatus.STARTED)
    await storage.log_step(saga_id, "Reserve", "act", SagaStepStatus.COMPLETED)
    await storage.log_step(saga_id, "Charge", "act", SagaStepStatus.FAILED, "card declined")
    await storage.log_step(saga_id, "Reserve", "compensate", SagaStepStatus.COMPENSATED)
    history = await storage.get_step_history(saga_id)
    assert all(isinstance(entry, SagaLogEntry) for entry in history)
    assert [(e.step_name, e.action, e.status, e.details) for e in history] == [
        ("Reserve", "act", SagaStepStatus.STARTED, None),
        ("Reserve", "act", SagaStepStatus.COMPLETED, None),
        ("Charge", "act", SagaStepStatus.FAILED, "card declined"),
        ("Reserve", "compensate", SagaStepStatus.COMPENSATED, None),
    ]
    assert all(e.saga_id == saga_id for e in history)
    assert all(e.timestamp.utcoffset() == datetime.timedelta(0) for e in history)
    assert history[1].status.value == "completed"
    assert history[0].timestamp.strftime("%H:%M:%S")  # what the examples print


async def test_recover_saga_resumes_a_history_written_with_log_step(storage: SagaStorage) -> None:
    """No stored responses: the completed step is skipped (not validated, not run again), the rest runs."""
    saga_id = uuid.uuid4()
    context = OrderContext(order_id="1", reservation_id="r-before-the-crash")
    await storage.create_saga(saga_id=saga_id, name="OrderSaga", context=context.to_dict())
    await storage.update_status(saga_id, SagaStatus.RUNNING)
    await storage.log_step(saga_id, "Reserve", "act", SagaStepStatus.STARTED)
    await storage.log_step(saga_id, "Reserve", "act", SagaStepStatus.COMPLETED)

    await recover_saga(OrderSaga(), saga_id, OrderContext, di.Container(), storage)
    assert RAN == ["Charge"]
    status, stored, _ = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPLETED
    assert OrderContext.from_dict(stored) == OrderContext("1", "r-before-the-crash", "p-for-r-before-the-crash")


async def test_a_transaction_also_resumes_a_history_written_with_log_step(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id=saga_id, name="OrderSaga", context=OrderContext(order_id="1").to_dict())
    await storage.update_status(saga_id, SagaStatus.RUNNING)
    await storage.log_step(saga_id, "Reserve", "act", SagaStepStatus.COMPLETED)
    async with OrderSaga().transaction(
        context=OrderContext(order_id="1"), container=di.Container(), storage=storage, saga_id=saga_id
    ) as transaction:
        resumed = [result.step_type async for result in transaction]
    assert resumed == [Charge]
    assert RAN == ["Charge"]


def test_from_dict_reads_a_camel_case_context_python_cqrs_stored() -> None:
    """python-cqrs stored contexts with camelCase keys; `SagaContext.from_dict` still reads them."""
    python_cqrs_row = {"orderId": "1", "reservationId": "r-old", "paymentId": None}
    assert OrderContext.from_dict(python_cqrs_row) == OrderContext("1", "r-old", None)
    assert OrderContext.from_dict({"ORDER_ID": "1", "order-id": "2"}) == OrderContext("2")  # the later key wins
    assert OrderContext("1", "r").to_dict() == {"order_id": "1", "reservation_id": "r", "payment_id": None}


async def test_recovery_reads_a_camel_case_context_python_cqrs_stored(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    python_cqrs_row = {"orderId": "1", "reservationId": "r-old", "paymentId": None}
    await storage.create_saga(saga_id=saga_id, name="OrderSaga", context=python_cqrs_row)
    await storage.update_status(saga_id, SagaStatus.RUNNING)
    await storage.log_step(saga_id, "Reserve", "act", SagaStepStatus.COMPLETED)
    await recover_saga(OrderSaga(), saga_id, OrderContext, di.Container(), storage)
    _, stored, _ = await storage.load_saga_state(saga_id)
    assert stored == {"order_id": "1", "reservation_id": "r-old", "payment_id": "p-for-r-old"}  # snake_case now


async def test_recovery_with_from_dict_as_builder_reads_a_camel_case_context(storage: SagaStorage) -> None:
    """The way docs/migrating.md gives for contexts python-cqrs wrote: ``context_builder=Context.from_dict``."""
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id=saga_id, name="OrderSaga", context={"orderId": "1", "reservationId": "r-old"})
    await storage.log_step(saga_id, "Reserve", "act", SagaStepStatus.COMPLETED)
    await recover_saga(OrderSaga(), saga_id, OrderContext.from_dict, di.Container(), storage)
    status, stored, _ = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPLETED
    assert stored == {"order_id": "1", "reservation_id": "r-old", "payment_id": "p-for-r-old"}


# -- recovery listings ---------------------------------------------------------------------------------


async def test_get_sagas_for_recovery_lists_the_unfinished_sagas(storage: SagaStorage) -> None:
    ids = {status: uuid.uuid4() for status in SagaStatus if status is not SagaStatus.PARKED}
    for status, saga_id in ids.items():
        await storage.create_saga(saga_id=saga_id, name="OrderSaga", context={"order_id": str(saga_id)})
        if status is not SagaStatus.PENDING:
            await storage.update_status(saga_id, status)
    other = uuid.uuid4()
    await storage.create_saga(saga_id=other, name="OtherSaga", context={})
    await storage.update_status(other, SagaStatus.RUNNING)

    found = set(await storage.get_sagas_for_recovery(limit=100, stale_after_seconds=0))
    # python-cqrs lists running and compensating sagas; a pending one (stored, never run) is recoverable here.
    unfinished = {SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED}
    assert found == {ids[status] for status in unfinished} | {other}
    assert set(await storage.get_sagas_for_recovery(limit=100, saga_name="OtherSaga")) == {other}
    assert len(await storage.get_sagas_for_recovery(limit=2)) == 2
    assert await storage.get_sagas_for_recovery(limit=100, stale_after_seconds=3600) == []

    await storage.increment_recovery_attempts(other)
    await storage.increment_recovery_attempts(other)
    assert other not in await storage.get_sagas_for_recovery(limit=100, max_recovery_attempts=2)
    assert other in await storage.get_sagas_for_recovery(limit=100, max_recovery_attempts=3)
    await storage.set_recovery_attempts(other, 0)
    assert other in await storage.get_sagas_for_recovery(limit=100, max_recovery_attempts=1)
    await storage.increment_recovery_attempts(other, new_status=SagaStatus.FAILED)
    assert (await storage.load_saga_state(other))[0] == SagaStatus.FAILED
    assert other not in await storage.get_sagas_for_recovery(limit=100)


async def test_a_pending_saga_is_recovered(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id=saga_id, name="OrderSaga", context=OrderContext(order_id="1").to_dict())
    assert saga_id in await storage.get_sagas_for_recovery(limit=10)
    await recover_saga(OrderSaga(), saga_id, OrderContext, di.Container(), storage)
    assert RAN == ["Reserve", "Charge"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.COMPLETED


async def test_the_memory_storage_honours_a_poked_updated_at() -> None:
    """python-cqrs's scheduler example fakes a stale saga through the private ``_sagas`` dict."""
    storage = MemorySagaStorage()
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id=saga_id, name="OrderSaga", context={"order_id": "1"})
    await storage.update_status(saga_id, SagaStatus.RUNNING)
    assert await storage.get_sagas_for_recovery(limit=10, stale_after_seconds=60) == []
    row = storage._sagas[saga_id]
    row["updated_at"] = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=70)
    assert await storage.get_sagas_for_recovery(limit=10, stale_after_seconds=60) == [saga_id]
    assert row["status"] == SagaStatus.RUNNING and row["name"] == "OrderSaga"  # the row reads by key too
    with pytest.raises(KeyError):
        row["no_such_field"] = 1


# -- a database python-cqrs already created ------------------------------------------------------------


@pytest.mark.parametrize(
    "storage_url",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
    indirect=True,
)
async def test_create_tables_refuses_python_cqrs_tables_and_leaves_them_alone(storage_url: str) -> None:
    """What docs/migrating.md says about an existing python-cqrs database (its table names)."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from cqrs.saga.storage.sqlalchemy import SchemaError, SqlAlchemySagaStorage

    theirs = sa.MetaData()
    sa.Table(
        "saga_executions", theirs,
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("recovery_attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
    )
    sa.Table(
        "saga_logs", theirs,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("saga_id", sa.Uuid(), nullable=False),
        sa.Column("step_name", sa.String(255)),
    )
    engine = create_async_engine(storage_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(theirs.create_all)
        storage = SqlAlchemySagaStorage(engine)
        with pytest.raises(SchemaError, match="python-cqrs's saga_executions") as refused:
            await storage.create_tables()
        assert "Nothing was written" in str(refused.value)
        async with engine.connect() as connection:
            tables, columns = await connection.run_sync(
                lambda sync: (
                    set(sa.inspect(sync).get_table_names()),
                    {column["name"] for column in sa.inspect(sync).get_columns("saga_executions")},
                )
            )
        assert "saga_log" not in tables  # nothing of ours was created beside theirs
        assert {"saga_executions", "saga_logs"} <= tables and "lease_epoch" not in columns  # theirs untouched
        await storage.close()
    finally:
        await engine.dispose()
