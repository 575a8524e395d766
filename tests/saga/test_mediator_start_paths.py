"""Every way a saga run starts goes through the mediator's run factory, so its event handlers, hooks and
correlation ids apply on each (issue 11: "a test per start path").

Each test starts (or takes up) the same two-step saga by one path and checks the same three things: the
steps' domain events reached their handlers, the mediator's hooks saw the run, and the saga's correlation
id was stored, seen by step code and given to the hooks. The integrations' start paths (FastAPI, Flask,
Django) have their own tests.
"""

from __future__ import annotations

import dataclasses
import typing
import uuid

import di
import pytest

import cqrs
from cqrs import correlation
from cqrs.response import Response
from cqrs.saga.hooks import RunInfo, SagaHook
from cqrs.saga.models import SagaContext
from cqrs.saga.recovery import RecoveryWorker, recover_saga
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from cqrs.triggers import TriggerRouter, trigger
from saga.helpers import EngineStorage, Harness, advance, make_harness

LEASE = 30.0
#: (step, correlation id, saga id) as each step's code saw them.
steps_seen: list[tuple[str, str | None, uuid.UUID | None]] = []
#: (event type, order id) as the handlers got them.
handled: list[tuple[str, str]] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    steps_seen.clear()
    handled.clear()


@dataclasses.dataclass(frozen=True)
class Placed:
    order_id: str


@dataclasses.dataclass(frozen=True)
class Shipped:
    order_id: str


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str = "o1"


class _Step(SagaStepHandler[OrderContext, Response]):
    event: typing.ClassVar[type[Placed] | type[Shipped]]

    def __init__(self) -> None:
        self._events: list[object] = []

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Response]:
        steps_seen.append((self.name, correlation.get_correlation_id(), correlation.get_saga_id()))
        self._events.append(self.event(context.order_id))
        return self._generate_step_result(Response())


class Place(_Step):
    event = Placed


class Ship(_Step):
    event = Shipped


class OrderSaga(Saga[OrderContext]):
    steps = [Place, Ship]

    @trigger(source="orders", idempotency_key="order_id")
    def from_order(self, event: dict[str, typing.Any]) -> OrderContext:
        return OrderContext(order_id=event["order_id"])


class OrderEventHandler:
    async def handle(self, event: Placed | Shipped) -> None:
        handled.append((type(event).__name__, event.order_id))


def bind_events(event_map: cqrs.EventMap) -> None:
    event_map.bind(Placed, OrderEventHandler)
    event_map.bind(Shipped, OrderEventHandler)


class Seen(SagaHook):
    """Notes each run's opening, steps and end, with the correlation id the run gives hooks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, uuid.UUID]] = []

    def saga_started(self, run: RunInfo) -> None:
        self.calls.append(("saga_started", run.correlation_id, run.saga_id))

    def saga_resumed(self, run: RunInfo) -> None:
        self.calls.append(("saga_resumed", run.correlation_id, run.saga_id))

    def step_completed(self, run: RunInfo, step: str, result: typing.Any, events: typing.Sequence[object]) -> None:
        self.calls.append((f"step_completed:{step}", run.correlation_id, run.saga_id))

    def saga_finished(self, run: RunInfo, status: SagaStatus, error: str | None) -> None:
        self.calls.append((f"saga_finished:{status.value}", run.correlation_id, run.saga_id))


RUN = ["step_completed:Place", "step_completed:Ship", "saga_finished:completed"]


def wired(storage: EngineStorage) -> tuple[Harness, Seen]:
    """A mediator with the order events' handlers and a `Seen` hook."""
    seen = Seen()
    harness = make_harness(
        (OrderContext, OrderSaga), storage=storage, lease_seconds=LEASE, domain_events_mapper=bind_events, hooks=[seen]
    )
    return harness, seen


async def assert_applied(
    storage: EngineStorage, seen: Seen, saga_id: uuid.UUID, correlation_id: str, calls: list[str]
) -> None:
    """The saga completed with both steps' events handled, ``calls`` seen by the hook, and ``correlation_id``
    stored, in the steps' code and given to the hook."""
    record = await storage.get_saga(saga_id)
    assert record is not None
    assert (record.status, record.correlation_id) == (SagaStatus.COMPLETED, correlation_id)
    assert steps_seen == [("Place", correlation_id, saga_id), ("Ship", correlation_id, saga_id)]
    assert handled == [("Placed", "o1"), ("Shipped", "o1")]
    assert seen.calls == [(call, correlation_id, saga_id) for call in calls]


async def interrupted(storage: EngineStorage, correlation_id: str) -> uuid.UUID:
    """A saga recorded by a runner that then died before running a step, its lease since lapsed."""
    crashed = make_harness((OrderContext, OrderSaga), storage=storage, lease_seconds=LEASE)
    saga_id = await crashed.mediator.start(OrderContext(), correlation_id=correlation_id)
    await advance(storage, LEASE + 1)
    return saga_id


@pytest.fixture
def ambient() -> typing.Iterator[str]:
    """A correlation id of the caller's own (a request's, a worker's) set around the test."""
    token = correlation.set_correlation_id("ambient-id")
    try:
        yield "ambient-id"
    finally:
        correlation.reset_correlation_id(token)


# -- starting -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["stream", "execute"])
async def test_stream_and_execute(storage: EngineStorage, method: str) -> None:
    harness, seen = wired(storage)
    saga_id = uuid.uuid4()

    results = [r async for r in getattr(harness.mediator, method)(OrderContext(), saga_id, correlation_id="c-1")]

    assert [r.step_type for r in results] == [Place, Ship]
    await assert_applied(storage, seen, saga_id, "c-1", ["saga_started", *RUN])


async def test_stream_under_an_ambient_correlation_id(storage: EngineStorage, ambient: str) -> None:
    harness, seen = wired(storage)
    saga_id = uuid.uuid4()

    await harness.run_all(OrderContext(), saga_id)

    await assert_applied(storage, seen, saga_id, ambient, ["saga_started", *RUN])


async def test_run(storage: EngineStorage) -> None:
    harness, seen = wired(storage)

    outcome = await harness.mediator.run(OrderContext(), correlation_id="c-2")

    assert outcome.succeeded
    await assert_applied(storage, seen, outcome.saga_id, "c-2", ["saga_started", *RUN])


async def test_start_then_resume(storage: EngineStorage) -> None:
    harness, seen = wired(storage)

    saga_id = await harness.mediator.start(OrderContext(), correlation_id="c-3")
    assert steps_seen == [] and seen.calls == [("saga_started", "c-3", saga_id)]
    outcome = await harness.mediator.resume(saga_id)

    assert outcome.status == SagaStatus.COMPLETED
    await assert_applied(storage, seen, saga_id, "c-3", ["saga_started", "saga_resumed", *RUN])


async def test_record_then_resume_as_triggers_do(storage: EngineStorage) -> None:
    harness, seen = wired(storage)
    saga_id = uuid.uuid4()

    assert await harness.mediator.record(OrderSaga, OrderContext(), saga_id, correlation_id="c-4")
    assert await harness.status(saga_id) == SagaStatus.PENDING
    assert not await harness.mediator.record(OrderSaga, OrderContext(), saga_id, correlation_id="other")
    await harness.mediator.resume(saga_id)

    await assert_applied(storage, seen, saga_id, "c-4", ["saga_started", "saga_resumed", *RUN])


async def test_a_trigger_delivery_then_resume(storage: EngineStorage) -> None:
    harness, seen = wired(storage)
    router = TriggerRouter([OrderSaga])

    accepted = await router.accept(harness.mediator, "orders", {"order_id": "o1"}, correlation_id="c-5")
    (started,) = accepted.started
    await harness.mediator.resume(started.saga_id)

    assert (accepted.status, started.correlation_id) == ("accepted", "c-5")
    await assert_applied(storage, seen, started.saga_id, "c-5", ["saga_started", "saga_resumed", *RUN])


async def test_the_start_row_for_an_outside_transaction_carries_correlation_and_trace_fields(
    storage: EngineStorage,
) -> None:
    """`new_saga` (Django's atomic start inserts the row itself) asks the hooks for trace fields too."""

    class Traced(SagaHook):
        def saga_starting(self, run: RunInfo) -> dict[str, str]:
            return {"traceparent": f"00-{run.saga_id.hex}-0000000000000001-01"}

    harness = make_harness((OrderContext, OrderSaga), storage=storage, hooks=[Traced()])
    saga_id = uuid.uuid4()

    row = harness.mediator.new_saga(OrderSaga, {"order_id": "o1"}, saga_id, correlation_id="c-6")

    assert (row.saga_id, row.name, row.status, row.correlation_id) == (
        saga_id, "OrderSaga", SagaStatus.PENDING, "c-6"
    )
    assert row.trace_context == {"traceparent": f"00-{saga_id.hex}-0000000000000001-01"}


# -- taking up stored sagas ----------------------------------------------------------------------
# Each runs under the saga's stored correlation id, not the ambient one of whoever takes it up.


async def test_recover_saga_with_a_mediator(storage: EngineStorage, ambient: str) -> None:
    saga_id = await interrupted(storage, "c-7")
    harness, seen = wired(storage)

    await recover_saga(OrderSaga, saga_id, OrderContext, None, storage, mediator=harness.mediator)

    await assert_applied(storage, seen, saga_id, "c-7", ["saga_resumed", *RUN])


async def test_recover_saga_with_hooks_and_an_event_map(storage: EngineStorage, ambient: str) -> None:
    saga_id = await interrupted(storage, "c-8")
    seen = Seen()
    event_map = cqrs.EventMap()
    bind_events(event_map)

    await recover_saga(
        OrderSaga(), saga_id, OrderContext, di.Container(), storage,
        lease_seconds=LEASE, hooks=[seen], event_map=event_map,
    )

    await assert_applied(storage, seen, saga_id, "c-8", ["saga_resumed", *RUN])


async def test_mediator_recover(storage: EngineStorage, ambient: str) -> None:
    saga_id = await interrupted(storage, "c-9")
    harness, seen = wired(storage)

    run = await harness.mediator.recover(OrderSaga, saga_id)

    assert run.status == SagaStatus.COMPLETED
    await assert_applied(storage, seen, saga_id, "c-9", ["saga_resumed", *RUN])


@pytest.mark.parametrize("build", ["RecoveryWorker(mediator)", "mediator.recovery_worker()"])
async def test_a_recovery_worker_built_from_the_mediator(storage: EngineStorage, ambient: str, build: str) -> None:
    """A recovered saga dispatches its domain events (it used to dispatch none)."""
    saga_id = await interrupted(storage, "c-10")
    harness, seen = wired(storage)
    if build == "RecoveryWorker(mediator)":
        worker = RecoveryWorker(harness.mediator)
    else:
        worker = harness.mediator.recovery_worker()

    assert await worker.run_once() == 1

    assert worker.recovered == {"completed": 1}
    assert (worker.storage, worker.settings) == (harness.mediator.storage, harness.mediator.settings)
    await assert_applied(storage, seen, saga_id, "c-10", ["saga_resumed", *RUN])


def test_a_worker_from_a_mediator_takes_nothing_else() -> None:
    mediator = make_harness((OrderContext, OrderSaga), storage=cqrs.MemorySagaStorage()).mediator

    with pytest.raises(TypeError, match="from the mediator"):
        RecoveryWorker(mediator, storage=mediator.storage)
    with pytest.raises(TypeError, match="a storage is required"):
        RecoveryWorker([OrderSaga], di.Container())


# -- Saga.transaction ------------------------------------------------------------------------------
# It takes python-cqrs's parameters (context, container, storage, ...): no hooks or event handlers can be
# given to it, so only the correlation id can apply here.


async def _transaction(storage: EngineStorage) -> uuid.UUID:
    async with OrderSaga().transaction(context=OrderContext(), container=di.Container(), storage=storage) as tx:
        async for _ in tx:
            pass
    return tx.saga_id


async def test_saga_transaction_steps_see_the_ambient_correlation_id(storage: EngineStorage, ambient: str) -> None:
    saga_id = await _transaction(storage)

    assert steps_seen == [("Place", ambient, saga_id), ("Ship", ambient, saga_id)]
    assert await storage.get_saga(saga_id) is not None


async def test_saga_transaction_stores_the_ambient_correlation_id(storage: EngineStorage, ambient: str) -> None:
    saga_id = await _transaction(storage)

    record = await storage.get_saga(saga_id)
    assert record is not None
    assert record.correlation_id == ambient
