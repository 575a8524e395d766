"""The engine with ``outbox=True``, over every storage: a step's notification events are written with its checkpoint
(and a compensation's with its, a start's with the start), and a run that lost its saga writes none of its events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import typing
import uuid

import di
import pytest

import cqrs
from cqrs.events.event import NotificationEvent
from cqrs.message_brokers.devnull import DevnullMessageBroker
from cqrs.message_brokers.protocol import Message
from cqrs.outbox import OutboxRelay, OutboxStatus
from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.exceptions import SagaOwnershipLostError
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.models import SagaContext
from cqrs.saga.recovery import RecoveryWorker
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from outbox_broker import MemoryBroker
from outbox_helpers import Storage, advance, names, open_storage

Payload = dict[str, typing.Any]


class StepDone(NotificationEvent[Payload]):
    """What a step tells other services."""


class StepUndone(NotificationEvent[Payload]):
    """What a compensation tells them."""


class OrderPlaced(NotificationEvent[Payload]):
    """What a saga's start carries."""


@dataclasses.dataclass(frozen=True)
class Noted:
    """A domain event (handled in-process, never written to the outbox)."""

    step: str


@dataclasses.dataclass
class ShipContext(SagaContext):
    order_id: str
    fail_at: str = ""


RUNS: list[tuple[str, str]] = []  # (step, action) of every run of a step, in order
GATES: dict[str, asyncio.Event] = {}  # a step waits for its gate (if any) inside act
ENTERED: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RUNS.clear()
    GATES.clear()
    ENTERED.clear()


class _Step(SagaStepHandler[ShipContext, cqrs.Response]):
    def __init__(self) -> None:
        self._events: list[object] = []

    async def act(self, context: ShipContext) -> SagaStepResult[ShipContext, cqrs.Response]:
        RUNS.append((self.name, "act"))
        attempt = sum(1 for run in RUNS if run == (self.name, "act"))
        self._events.append(StepDone(event_name=f"{self.name}.done", topic="orders",
                                     payload={"order": context.order_id, "step": self.name, "attempt": attempt}))
        self._events.append(Noted(self.name))
        if self.name in GATES:
            ENTERED.setdefault(self.name, asyncio.Event()).set()
            await GATES[self.name].wait()
        if context.fail_at == self.name:
            raise RuntimeError(f"{self.name} refused")
        return self._generate_step_result(cqrs.Response())

    async def compensate(self, context: ShipContext) -> None:
        RUNS.append((self.name, "compensate"))
        self._events.append(StepUndone(event_name=f"{self.name}.undone", topic="orders",
                                       payload={"order": context.order_id, "step": self.name}))


class Reserve(_Step):
    name = "reserve"


class Charge(_Step):
    name = "charge"


class Ship(_Step):
    name = "ship"


class ShipSaga(cqrs.Saga[ShipContext]):
    name = "ship"
    steps = [Reserve, Charge, Ship]


@pytest.fixture
async def storage(storage_url: str) -> typing.AsyncIterator[Storage]:
    store = await open_storage(storage_url)
    yield store
    await store.close()


def mediator(storage: Storage, **options: typing.Any) -> SagaMediator:
    return bootstrap(
        di.Container(), sagas_mapper=lambda m: m.bind(ShipContext, ShipSaga), saga_storage=storage, outbox=True,
        **options,
    )


async def event_names(storage: Storage, saga_id: uuid.UUID) -> list[str]:
    return [row.payload["event_name"] for row in await storage.list_outbox(saga_id=saga_id)]


async def test_each_steps_notification_events_are_written_with_its_checkpoint(storage: Storage) -> None:
    broker = DevnullMessageBroker()
    outcome = await mediator(storage, message_broker=broker).run(ShipContext("o-1"), correlation_id="req-7")
    assert outcome.status == SagaStatus.COMPLETED

    rows = await storage.list_outbox(saga_id=outcome.saga_id)
    assert [r.payload["event_name"] for r in rows] == ["reserve.done", "charge.done", "ship.done"]  # no domain event
    first = rows[0]
    assert (first.topic, first.name, first.status) == ("orders", "StepDone", OutboxStatus.PENDING)
    assert first.payload["payload"] == {"order": "o-1", "step": "reserve", "attempt": 1}
    assert first.message_id == uuid.UUID(first.payload["event_id"])
    assert first.headers == {
        "message-id": str(first.message_id),
        "saga-id": str(outcome.saga_id),
        "correlation-id": "req-7",
        "event-name": "reserve.done",
    }
    assert broker.sent == []  # with the outbox on, nothing goes to the broker directly


async def test_compensations_write_their_events_after_the_failure(storage: Storage) -> None:
    outcome = await mediator(storage).run(ShipContext("o-2", fail_at="ship"))
    assert outcome.status == SagaStatus.FAILED
    # ship's own event is dropped with its failed attempt: what did not happen is not announced.
    assert await event_names(storage, outcome.saga_id) == [
        "reserve.done", "charge.done", "charge.undone", "reserve.undone",
    ]


async def test_a_start_writes_the_events_it_carries_in_its_commit(storage: Storage) -> None:
    placed = OrderPlaced(event_name="order.placed", topic="orders", payload={"order": "o-3"})
    run = mediator(storage)
    saga_id = await run.start(ShipContext("o-3"), events=[placed, Noted("start")])
    [row] = await storage.list_outbox(saga_id=saga_id)
    assert (row.message_id, row.name) == (placed.event_id, "OrderPlaced")
    outcome = await run.resume(saga_id)
    assert outcome.status == SagaStatus.COMPLETED
    assert await event_names(storage, saga_id) == ["order.placed", "reserve.done", "charge.done", "ship.done"]


async def test_a_run_that_lost_its_saga_writes_none_of_its_events(storage: Storage) -> None:
    """A runner stalls inside charge past its lease; the saga is claimed from under it. When it wakes its
    checkpoint is refused, and charge's event of that run never reaches the outbox; the run that finishes the
    saga writes its own."""
    GATES["charge"] = asyncio.Event()
    first = mediator(storage, lease_seconds=10)
    saga_id = uuid.uuid4()
    stalled = asyncio.ensure_future(first.run(ShipContext("o-4"), saga_id=saga_id))
    await asyncio.wait_for(ENTERED.setdefault("charge", asyncio.Event()).wait(), 30)
    await advance(storage, 11)
    # A recovery claim fences the stalled run (in one process the engine then refuses to run the saga twice
    # and gives the lease back).
    recovery = RecoveryWorker(mediator(storage))
    assert await recovery.run_once() == 1
    assert recovery.recovered == {"error": 1}

    GATES["charge"].set()
    with pytest.raises(SagaOwnershipLostError):
        await asyncio.wait_for(stalled, 30)
    assert await event_names(storage, saga_id) == ["reserve.done"]

    assert await recovery.run_once() == 1
    assert recovery.recovered == {"error": 1, "completed": 1}
    rows = await storage.list_outbox(saga_id=saga_id)
    assert [(r.payload["event_name"], r.payload["payload"]["attempt"]) for r in rows] == [
        ("reserve.done", 1), ("charge.done", 2), ("ship.done", 1),
    ]
    assert RUNS.count(("charge", "act")) == 2


async def test_a_relay_woken_by_the_mediator_publishes_a_run_at_once(storage: Storage) -> None:
    got = asyncio.Event()

    class Consumer(MemoryBroker):
        async def send_message(self, message: Message) -> None:
            await super().send_message(message)
            if len(self.sent) == 3:
                got.set()

    broker = Consumer()
    relay = OutboxRelay(storage, broker, poll_interval=3600)
    task = asyncio.ensure_future(relay.run())
    try:
        outcome = await mediator(storage, hooks=[relay.waker()]).run(ShipContext("o-5"), correlation_id="req-9")
        await asyncio.wait_for(got.wait(), 30)
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)
    assert [m.headers["event-name"] for m in broker.sent] == ["reserve.done", "charge.done", "ship.done"]
    assert {m.headers["saga-id"] for m in broker.sent} == {str(outcome.saga_id)}
    assert {m.headers["correlation-id"] for m in broker.sent} == {"req-9"}
    assert all(m.headers["message-id"] == str(m.message_id) for m in broker.sent)
    assert await names(storage, status=OutboxStatus.PUBLISHED) == ["StepDone"] * 3
