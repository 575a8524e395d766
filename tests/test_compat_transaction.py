"""`Saga.transaction`, python-cqrs's lower-level API, on the one engine path (issue 12, point 4).

``async with saga.transaction(context=..., container=..., storage=..., saga_id=...) as tx:
async for result in tx: ...`` runs the saga step by step, each step recorded
before its result is yielded, on every storage. Leaving the loop early
(``break``) compensates nothing and leaves the saga running; an exception in
the block compensates; a saga found compensating is compensated and then
refused forward execution with python-cqrs's RuntimeError; a fresh
``saga_id`` creates the saga, a known one continues it.
"""

from __future__ import annotations

import dataclasses
import typing
import uuid

import di
import pytest

from cqrs.response import Response
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.saga.storage.protocol import SagaStorage
from cqrs.saga.transaction import SagaTransaction


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


LEDGER: list[str] = []


@pytest.fixture(autouse=True)
def clean_ledger() -> typing.Iterator[None]:
    LEDGER.clear()
    yield
    LEDGER.clear()


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    reservation_id: str | None = None
    payment_id: str | None = None
    shipped: bool = False


class Reserved(Response):
    reservation_id: str


class Charged(Response):
    payment_id: str


class Reserve(SagaStepHandler[OrderContext, Reserved]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reserved]:
        LEDGER.append("reserve")
        context.reservation_id = f"r-{context.order_id}"
        return self._generate_step_result(Reserved(reservation_id=context.reservation_id))

    async def compensate(self, context: OrderContext) -> None:
        LEDGER.append(f"release {context.reservation_id}")


class Charge(SagaStepHandler[OrderContext, Charged]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Charged]:
        LEDGER.append("charge")
        context.payment_id = f"p-{context.order_id}"
        return self._generate_step_result(Charged(payment_id=context.payment_id))

    async def compensate(self, context: OrderContext) -> None:
        LEDGER.append(f"refund {context.payment_id}")


class Ship(SagaStepHandler[OrderContext, None]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
        LEDGER.append("ship")
        context.shipped = True
        return self._generate_step_result(None)


class OrderSaga(Saga[OrderContext]):
    steps = [Reserve, Charge, Ship]


def transaction(
    storage: SagaStorage, saga_id: uuid.UUID | None, order_id: str = "1", **options: typing.Any
) -> SagaTransaction[OrderContext]:
    return OrderSaga().transaction(
        context=OrderContext(order_id=order_id), container=di.Container(), storage=storage, saga_id=saga_id,
        **options,
    )


async def rows(storage: SagaStorage, saga_id: uuid.UUID) -> list[tuple[str, str, str]]:
    return [(r.step_name, r.action, r.status.value) for r in await storage.get_step_history(saga_id)]


async def test_a_fresh_saga_id_creates_the_saga_and_yields_each_recorded_step(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    seen: list[tuple[type[typing.Any], typing.Any, list[tuple[str, str, str]]]] = []
    async with transaction(storage, saga_id) as tx:
        assert isinstance(tx, SagaTransaction)
        assert tx.saga_id == saga_id
        async for result in tx:
            assert result.saga_id == saga_id
            seen.append((result.step_type, result.response, await rows(storage, saga_id)))
    assert [(step, response) for step, response, _ in seen] == [
        (Reserve, Reserved(reservation_id="r-1")),
        (Charge, Charged(payment_id="p-1")),
        (Ship, None),
    ]
    # Each result is yielded once its step is recorded.
    assert [len(history) for _, _, history in seen] == [1, 2, 3]
    assert tx.completed_steps == [Reserve, Charge, Ship]
    status, context, _ = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPLETED
    assert OrderContext.from_dict(context) == OrderContext("1", "r-1", "p-1", True)
    assert (await storage.get_saga(saga_id)).name == "OrderSaga"  # type: ignore[union-attr]


async def test_without_a_saga_id_the_transaction_makes_one(storage: SagaStorage) -> None:
    async with transaction(storage, None) as tx:
        results = [result async for result in tx]
    assert isinstance(tx.saga_id, uuid.UUID)
    assert {result.saga_id for result in results} == {tx.saga_id}
    assert (await storage.load_saga_state(tx.saga_id))[0] == SagaStatus.COMPLETED


async def test_break_leaves_the_saga_running_and_compensates_nothing(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    async with transaction(storage, saga_id) as tx:
        async for result in tx:
            assert result.step_type is Reserve
            break
    assert LEDGER == ["reserve"]
    status, context, _ = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.RUNNING
    assert context["reservation_id"] == "r-1"
    assert await rows(storage, saga_id) == [("Reserve", "act", "completed")]


async def test_a_second_transaction_with_the_same_id_continues_where_the_first_stopped(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    async with transaction(storage, saga_id) as tx:
        async for _ in tx:
            break
    # Another transaction (another process, after a restart) with the stored id: only the rest runs,
    # on the stored context, and the skipped step is not yielded again.
    async with transaction(storage, saga_id, order_id="ignored") as tx:
        continued = [result.step_type async for result in tx]
    assert continued == [Charge, Ship]
    assert tx.completed_steps == [Reserve, Charge, Ship]
    assert LEDGER == ["reserve", "charge", "ship"]
    status, context, _ = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPLETED
    assert context["order_id"] == "1" and context["payment_id"] == "p-1"
    # A completed saga runs nothing again.
    async with transaction(storage, saga_id) as tx:
        assert [result async for result in tx] == []
    assert LEDGER == ["reserve", "charge", "ship"]


async def test_an_exception_in_the_block_compensates_the_completed_steps(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()

    class Stop(Exception):
        pass

    stop = Stop("caller gave up")
    with pytest.raises(Stop) as raised:
        async with transaction(storage, saga_id, compensation_retry_delay=0.0) as tx:
            async for result in tx:
                if result.step_type is Charge:
                    raise stop
    assert raised.value is stop  # the caller's own exception, unchanged
    assert LEDGER == ["reserve", "charge", "refund p-1", "release r-1"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.FAILED
    history = await rows(storage, saga_id)
    assert history[:2] == [("Reserve", "act", "completed"), ("Charge", "act", "completed")]
    assert history[-2:] == [("Charge", "compensate", "compensated"), ("Reserve", "compensate", "compensated")]


async def test_a_failing_step_compensates_and_raises_its_own_error(storage: SagaStorage) -> None:
    class Declined(SagaStepHandler[OrderContext, None]):
        async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
            raise ValueError("card declined")

    class DeclinedSaga(Saga[OrderContext]):
        steps = [Reserve, Declined]

    saga_id = uuid.uuid4()
    with pytest.raises(ValueError, match="card declined"):
        async with DeclinedSaga().transaction(
            context=OrderContext(order_id="1"), container=di.Container(), storage=storage, saga_id=saga_id,
            compensation_retry_delay=0.0,
        ) as tx:
            async for _ in tx:
                pass
    assert LEDGER == ["reserve", "release r-1"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.FAILED
    assert ("Declined", "act", "failed") in await rows(storage, saga_id)


async def test_a_saga_found_compensating_is_compensated_and_refused_forward(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    async with transaction(storage, saga_id) as tx:
        async for result in tx:
            if result.step_type is Charge:
                break
    await storage.update_status(saga_id, SagaStatus.COMPENSATING)  # as python-cqrs's recovery example does
    with pytest.raises(RuntimeError) as raised:
        async with transaction(storage, saga_id) as tx:
            async for _ in tx:
                pytest.fail("a compensating saga must not run forward")
    message = str(raised.value)
    assert "recovered in" in message and "state" in message  # what python-cqrs's recover_saga looks for
    assert "compensating" in message
    assert LEDGER == ["reserve", "charge", "refund p-1", "release r-1"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.FAILED


async def test_compensation_retries_follow_the_transactions_settings(storage: SagaStorage) -> None:
    attempts: list[int] = []

    class Flaky(SagaStepHandler[OrderContext, None]):
        async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
            return self._generate_step_result(None)

        async def compensate(self, context: OrderContext) -> None:
            attempts.append(len(attempts) + 1)
            if len(attempts) < 3:
                raise ConnectionError("try again")

    class Boom(SagaStepHandler[OrderContext, None]):
        async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
            raise RuntimeError("boom")

    class FlakySaga(Saga[OrderContext]):
        steps = [Flaky, Boom]

    saga_id = uuid.uuid4()
    with pytest.raises(RuntimeError, match="boom"):
        async with FlakySaga().transaction(
            context=OrderContext(order_id="1"), container=di.Container(), storage=storage, saga_id=saga_id,
            compensation_retry_count=3, compensation_retry_delay=0.001, compensation_retry_backoff=1.0,
        ) as tx:
            async for _ in tx:
                pass
    assert attempts == [1, 2, 3]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.FAILED
    assert ("Flaky", "compensate", SagaStepStatus.COMPENSATED.value) in await rows(storage, saga_id)

    attempts.clear()
    other = uuid.uuid4()
    with pytest.raises(RuntimeError, match="boom"):
        async with FlakySaga().transaction(
            context=OrderContext(order_id="2"), container=di.Container(), storage=storage, saga_id=other,
            compensation_retry_count=2, compensation_retry_delay=0.0,
        ) as tx:
            async for _ in tx:
                pass
    assert attempts == [1, 2]  # gave up after two attempts
    assert ("Flaky", "compensate", "failed") in await rows(storage, other)
