"""Requirement 1: the seed's public API — `stream` yields typed step results; `execute` is the same."""

from __future__ import annotations

import dataclasses
import uuid

import di
import pytest

import cqrs
from cqrs.response import Response
from cqrs.saga import bootstrap
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage

LEDGER: list[str] = []


@pytest.fixture(autouse=True)
def _clear_ledger() -> None:
    LEDGER.clear()


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    amount: float
    reservation_id: str | None = None
    payment_id: str | None = None


class Reserved(Response):
    reservation_id: str


class Charged(Response):
    payment_id: str
    amount: float


class ReserveStep(SagaStepHandler[OrderContext, Reserved]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reserved]:
        LEDGER.append(f"reserve:{context.order_id}")
        context.reservation_id = f"r-{context.order_id}"
        return self._generate_step_result(Reserved(reservation_id=context.reservation_id))


class ChargeStep(SagaStepHandler[OrderContext, Charged]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Charged]:
        LEDGER.append(f"charge:{context.order_id}")
        context.payment_id = f"p-{context.order_id}"
        return self._generate_step_result(Charged(payment_id=context.payment_id, amount=context.amount))


class OrderSaga(Saga[OrderContext]):
    steps = [ReserveStep, ChargeStep]


def _mediator(storage: EngineStorage) -> cqrs.SagaMediator:
    def saga_mapper(mapper: cqrs.SagaMap) -> None:
        mapper.bind(OrderContext, OrderSaga)

    return bootstrap.bootstrap(di_container=di.Container(), sagas_mapper=saga_mapper, saga_storage=storage)


async def test_stream_yields_typed_results_in_step_order(storage: EngineStorage) -> None:
    mediator = _mediator(storage)
    saga_id = uuid.uuid4()

    results = [r async for r in mediator.stream(OrderContext(order_id="o1", amount=12.5), saga_id=saga_id)]

    assert [r.step_type for r in results] == [ReserveStep, ChargeStep]
    assert all(isinstance(r, SagaStepResult) for r in results)
    assert all(r.saga_id == saga_id for r in results)
    assert all(r.replayed is False for r in results)
    reserved, charged = results[0].response, results[1].response
    assert isinstance(reserved, Reserved)
    assert reserved.reservation_id == "r-o1"
    assert isinstance(charged, Charged)
    assert (charged.payment_id, charged.amount) == ("p-o1", 12.5)
    assert LEDGER == ["reserve:o1", "charge:o1"]

    status, context, _ = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPLETED
    assert context == {"order_id": "o1", "amount": 12.5, "reservation_id": "r-o1", "payment_id": "p-o1"}


async def test_stream_changes_the_callers_context_object(storage: EngineStorage) -> None:
    mediator = _mediator(storage)
    context = OrderContext(order_id="o2", amount=1.0)

    async for _ in mediator.stream(context, saga_id=uuid.uuid4()):
        pass

    assert context.reservation_id == "r-o2"
    assert context.payment_id == "p-o2"


async def test_stream_without_saga_id_uses_a_fresh_id_per_run(storage: EngineStorage) -> None:
    mediator = _mediator(storage)

    first = [r async for r in mediator.stream(OrderContext(order_id="a", amount=1.0))]
    second = [r async for r in mediator.stream(OrderContext(order_id="b", amount=1.0))]

    assert isinstance(first[0].saga_id, uuid.UUID)
    assert first[0].saga_id == first[1].saga_id
    assert first[0].saga_id != second[0].saga_id
    assert LEDGER == ["reserve:a", "charge:a", "reserve:b", "charge:b"]
    assert (await storage.load_saga_state(second[0].saga_id))[0] == SagaStatus.COMPLETED


async def test_execute_is_the_same_operation_as_stream(storage: EngineStorage) -> None:
    # Two mediators on one storage: each saga is stored under its own id.
    stream_storage = execute_storage = storage
    stream_id, execute_id = uuid.uuid4(), uuid.uuid4()

    streamed = [r async for r in _mediator(stream_storage).stream(OrderContext("o3", 3.0), saga_id=stream_id)]
    executed = [r async for r in _mediator(execute_storage).execute(OrderContext("o3", 3.0), saga_id=execute_id)]

    assert [(r.step_type, r.response, r.replayed) for r in executed] == [
        (r.step_type, r.response, r.replayed) for r in streamed
    ]
    assert all(r.saga_id == execute_id for r in executed)
    assert LEDGER == ["reserve:o3", "charge:o3"] * 2
    assert await execute_storage.load_saga_state(execute_id) == (
        await stream_storage.load_saga_state(stream_id)
    )
    stream_rows = [(e.step_name, e.action, e.status) for e in await stream_storage.get_step_history(stream_id)]
    execute_rows = [(e.step_name, e.action, e.status) for e in await execute_storage.get_step_history(execute_id)]
    assert execute_rows == stream_rows == [
        ("ReserveStep", "act", "completed"),
        ("ChargeStep", "act", "completed"),
    ]


async def test_execute_of_a_stored_saga_continues_it_like_stream(storage: EngineStorage) -> None:
    mediator = _mediator(storage)
    saga_id = uuid.uuid4()

    async for _ in mediator.stream(OrderContext("o4", 4.0), saga_id=saga_id):
        break
    results = [r async for r in mediator.execute(OrderContext("ignored", 0.0), saga_id=saga_id)]

    assert [(r.step_type, r.replayed) for r in results] == [(ReserveStep, True), (ChargeStep, False)]
    assert LEDGER == ["reserve:o4", "charge:o4"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.COMPLETED
