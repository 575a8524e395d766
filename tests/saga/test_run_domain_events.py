"""Requirement 13: domain events from steps reach their handlers once the step is recorded."""

from __future__ import annotations

import dataclasses
import logging
import typing
import uuid

import di
import pytest
from di.dependent import Dependent

import cqrs
from cqrs.response import Response
from cqrs.saga.fallback import Fallback
from cqrs.saga.models import SagaContext
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage, Harness, make_harness

# Handlers look at storage through these (set per test); what they saw lands in HANDLED.
STORAGE: list[EngineStorage] = []
HANDLED: list[dict[str, typing.Any]] = []
LEDGER: list[str] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    STORAGE.clear()
    HANDLED.clear()
    LEDGER.clear()


@dataclasses.dataclass(frozen=True)
class OrderPlaced:
    saga_id: uuid.UUID
    order_id: str


@dataclasses.dataclass(frozen=True)
class SpecialOrderPlaced(OrderPlaced):
    pass


@dataclasses.dataclass(frozen=True)
class OrderShipped:
    order_id: str


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    saga_id: str = ""
    fail_shipping: bool = False
    special: bool = False


class Mailer:
    """A dependency the handler gets from the container."""

    def __init__(self) -> None:
        self.sent: list[str] = []


class PlaceStep(SagaStepHandler[OrderContext, Response]):
    def __init__(self) -> None:
        self._events: list[object] = []

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Response]:
        LEDGER.append("act:place")
        event_type = SpecialOrderPlaced if context.special else OrderPlaced
        self._events.append(event_type(saga_id=uuid.UUID(context.saga_id), order_id=context.order_id))
        return self._generate_step_result(Response())

    async def compensate(self, context: OrderContext) -> None:
        LEDGER.append("compensate:place")


class ShipStep(SagaStepHandler[OrderContext, Response]):
    def __init__(self) -> None:
        self._events: list[object] = []

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Response]:
        LEDGER.append("act:ship")
        self._events.append(OrderShipped(order_id=context.order_id))
        if context.fail_shipping:
            raise ConnectionError("courier down")
        return self._generate_step_result(Response())


class OrderSaga(Saga[OrderContext]):
    steps = [PlaceStep, ShipStep]


class OrderPlacedHandler:
    def __init__(self, mailer: Mailer) -> None:
        self._mailer = mailer

    async def handle(self, event: OrderPlaced) -> None:
        LEDGER.append(f"handled:{type(event).__name__}")
        history = await STORAGE[0].get_step_history(event.saga_id)
        status, _, _ = await STORAGE[0].load_saga_state(event.saga_id)
        HANDLED.append(
            {
                "event": event,
                "history": [(e.step_name, e.action, str(e.status)) for e in history],
                "status": status,
            }
        )
        self._mailer.sent.append(f"placed {event.order_id}")


class OrderShippedHandler:
    async def handle(self, event: OrderShipped) -> None:
        LEDGER.append("handled:OrderShipped")


class BrokenHandler:
    async def handle(self, event: OrderPlaced) -> None:
        LEDGER.append("handled:broken")
        raise RuntimeError("handler exploded")


def _context(order_id: str, saga_id: uuid.UUID, **kwargs: typing.Any) -> OrderContext:
    return OrderContext(order_id=order_id, saga_id=str(saga_id), **kwargs)


def _harness(
    storage: EngineStorage, mapper: typing.Callable[[cqrs.EventMap], None], mailer: Mailer | None = None
) -> Harness:
    container = di.Container()
    if mailer is not None:
        container.bind(di.bind_by_type(Dependent(lambda: mailer, scope=None), Mailer))
    harness = make_harness((OrderContext, OrderSaga), storage=storage, container=container, domain_events_mapper=mapper)
    STORAGE.append(harness.storage)
    return harness


async def test_events_reach_their_handler_after_the_step_is_recorded(storage: EngineStorage) -> None:
    mailer = Mailer()
    harness = _harness(storage, lambda m: m.bind(OrderPlaced, OrderPlacedHandler), mailer)
    saga_id = uuid.uuid4()

    await harness.run_all(_context("o1", saga_id), saga_id=saga_id)

    (seen,) = HANDLED
    assert seen["event"] == OrderPlaced(saga_id=saga_id, order_id="o1")
    assert seen["history"] == [("PlaceStep", "act", "completed")]
    assert seen["status"] == SagaStatus.RUNNING
    # The handler ran between the two steps, and was built by the container with its dependency.
    assert LEDGER == ["act:place", "handled:OrderPlaced", "act:ship"]
    assert mailer.sent == ["placed o1"]


async def test_handlers_bound_to_a_base_event_type_get_subclass_events(storage: EngineStorage) -> None:
    harness = _harness(storage, lambda m: m.bind(OrderPlaced, OrderPlacedHandler), Mailer())
    saga_id = uuid.uuid4()

    await harness.run_all(_context("o2", saga_id, special=True), saga_id=saga_id)

    assert [type(h["event"]) for h in HANDLED] == [SpecialOrderPlaced]


async def test_a_failing_handler_does_not_fail_the_saga(
    storage: EngineStorage, caplog: pytest.LogCaptureFixture
) -> None:
    def mapper(event_map: cqrs.EventMap) -> None:
        event_map.bind(OrderPlaced, BrokenHandler)
        event_map.bind(OrderPlaced, OrderPlacedHandler)

    harness = _harness(storage, mapper, Mailer())
    saga_id = uuid.uuid4()

    with caplog.at_level(logging.ERROR, logger="cqrs.events"):
        results = await harness.run_all(_context("o3", saga_id), saga_id=saga_id)

    assert [r.step_type for r in results] == [PlaceStep, ShipStep]
    assert await harness.status(saga_id) == SagaStatus.COMPLETED
    assert LEDGER == ["act:place", "handled:broken", "handled:OrderPlaced", "act:ship"]
    assert "compensate:place" not in LEDGER
    assert any("BrokenHandler" in r.getMessage() for r in caplog.records)


async def test_events_of_a_failed_step_are_not_delivered(storage: EngineStorage) -> None:
    def mapper(event_map: cqrs.EventMap) -> None:
        event_map.bind(OrderPlaced, OrderPlacedHandler)
        event_map.bind(OrderShipped, OrderShippedHandler)

    harness = _harness(storage, mapper, Mailer())
    saga_id = uuid.uuid4()

    with pytest.raises(ConnectionError):
        await harness.run_all(_context("o4", saga_id, fail_shipping=True), saga_id=saga_id)

    assert "handled:OrderShipped" not in LEDGER
    assert LEDGER == ["act:place", "handled:OrderPlaced", "act:ship", "compensate:place"]


async def test_events_of_the_last_step_are_delivered_after_the_saga_is_stored_completed(storage: EngineStorage) -> None:
    seen_status: list[SagaStatus] = []

    class ShippedStatusHandler:
        async def handle(self, event: OrderShipped) -> None:
            seen_status.append((await STORAGE[0].load_saga_state(SAGA_IDS[0]))[0])

    SAGA_IDS: list[uuid.UUID] = [uuid.uuid4()]
    harness = _harness(storage, lambda m: m.bind(OrderShipped, ShippedStatusHandler))

    await harness.run_all(_context("o5", SAGA_IDS[0]), saga_id=SAGA_IDS[0])

    assert seen_status == [SagaStatus.COMPLETED]


async def test_replayed_steps_do_not_deliver_their_events_again(storage: EngineStorage) -> None:
    harness = _harness(storage, lambda m: m.bind(OrderPlaced, OrderPlacedHandler), Mailer())
    saga_id = uuid.uuid4()

    async for _ in harness.mediator.stream(_context("o6", saga_id), saga_id=saga_id):
        break
    await harness.run_all(_context("o6", saga_id), saga_id=saga_id)

    assert len(HANDLED) == 1
    assert LEDGER == ["act:place", "handled:OrderPlaced", "act:ship"]


# -- events of attempts that failed ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Charged:
    attempt: int


class ChargedHandler:
    async def handle(self, event: Charged) -> None:
        LEDGER.append(f"handled:Charged#{event.attempt}")


@dataclasses.dataclass
class ChargeContext(SagaContext):
    failures_left: int = 0
    attempts: int = 0


class RetriedChargeStep(SagaStepHandler[ChargeContext, Response]):
    retry = RetryPolicy(attempts=3, delay=0.1, retry_on=(ConnectionError,))

    def __init__(self) -> None:
        self._events: list[object] = []

    async def act(self, context: ChargeContext) -> SagaStepResult[ChargeContext, Response]:
        context.attempts += 1
        self._events.append(Charged(attempt=context.attempts))
        if context.failures_left:
            context.failures_left -= 1
            raise ConnectionError("gateway timeout")
        return self._generate_step_result(Response())


class RetriedChargeSaga(Saga[ChargeContext]):
    steps = [RetriedChargeStep]


class PrimaryCharge(SagaStepHandler[ChargeContext, Response]):
    def __init__(self) -> None:
        self._events: list[object] = []

    async def act(self, context: ChargeContext) -> SagaStepResult[ChargeContext, Response]:
        self._events.append(Charged(attempt=-1))
        raise ConnectionError("primary down")


class FallbackCharge(SagaStepHandler[ChargeContext, Response]):
    def __init__(self) -> None:
        self._events: list[object] = []

    async def act(self, context: ChargeContext) -> SagaStepResult[ChargeContext, Response]:
        self._events.append(Charged(attempt=99))
        return self._generate_step_result(Response())


class FallbackChargeSaga(Saga[ChargeContext]):
    steps = [Fallback(step=PrimaryCharge, fallback=FallbackCharge)]


async def test_events_of_a_failed_primary_are_dropped_and_the_fallbacks_delivered(storage: EngineStorage) -> None:
    harness = make_harness(
        (ChargeContext, FallbackChargeSaga),
        storage=storage,
        domain_events_mapper=lambda m: m.bind(Charged, ChargedHandler),
    )

    await harness.run_all(ChargeContext())

    assert LEDGER == ["handled:Charged#99"]


async def test_events_of_retried_attempts_that_failed_are_not_delivered(storage: EngineStorage) -> None:
    harness = make_harness(
        (ChargeContext, RetriedChargeSaga),
        storage=storage,
        domain_events_mapper=lambda m: m.bind(Charged, ChargedHandler),
    )

    await harness.run_all(ChargeContext(failures_left=2))

    assert harness.sleep.delays == pytest.approx([0.1, 0.2])
    assert LEDGER == ["handled:Charged#3"]
