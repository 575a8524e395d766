"""Requirement 2: steps are built through the DI container, one instance per saga run."""

from __future__ import annotations

import dataclasses
import typing
import uuid

import di
import pytest
from di.dependent import Dependent

import cqrs
from cqrs.response import Response
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage, make_harness

T = typing.TypeVar("T")

# (what, step instance) in the order the engine touched them; instances are kept
# alive so that identity comparisons cannot be fooled by a reused id().
SEEN: list[tuple[str, object]] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


class PriceService:
    """A service with no dependencies: `di` builds it from its (empty) signature."""

    def price_of(self, sku: str) -> float:
        return {"apple": 1.5, "pear": 2.0}[sku]


class AuditLog:
    def __init__(self) -> None:
        self.lines: list[str] = []


@dataclasses.dataclass
class Basket(SagaContext):
    sku: str
    price: float | None = None
    fail_at_end: bool = False


class Priced(Response):
    price: float


class PriceStep(SagaStepHandler[Basket, Priced]):
    def __init__(self, prices: PriceService, audit: AuditLog) -> None:
        self._prices = prices
        self._audit = audit
        self._events: list[object] = []

    async def act(self, context: Basket) -> SagaStepResult[Basket, Priced]:
        SEEN.append(("act", self))
        context.price = self._prices.price_of(context.sku)
        self._audit.lines.append(f"priced {context.sku}")
        self._events.append(PriceSet(sku=context.sku))
        return self._generate_step_result(Priced(price=context.price))

    @property
    def events(self) -> list[typing.Any]:
        SEEN.append(("events", self))
        return super().events

    async def compensate(self, context: Basket) -> None:
        SEEN.append(("compensate", self))
        self._audit.lines.append(f"unpriced {context.sku}")


class MaybeFailStep(SagaStepHandler[Basket, Response]):
    async def act(self, context: Basket) -> SagaStepResult[Basket, Response]:
        SEEN.append(("act", self))
        if context.fail_at_end:
            raise RuntimeError("checkout refused")
        return self._generate_step_result(Response())


class BasketSaga(Saga[Basket]):
    steps = [PriceStep, MaybeFailStep]


@dataclasses.dataclass
class PriceSet:
    sku: str


class PriceSetHandler:
    async def handle(self, event: PriceSet) -> None:
        SEEN.append(("handled", event))


def _events_mapper(event_map: cqrs.EventMap) -> None:
    event_map.bind(PriceSet, PriceSetHandler)


def _instances(what: str, step_type: type) -> list[object]:
    return [obj for kind, obj in SEEN if kind == what and type(obj) is step_type]


async def test_step_gets_its_typed_dependencies_from_a_di_container(storage: EngineStorage) -> None:
    container = di.Container()
    audit = AuditLog()
    container.bind(di.bind_by_type(Dependent(lambda: audit, scope=None), AuditLog))
    harness = make_harness((Basket, BasketSaga), storage=storage, container=container)

    results = await harness.run_all(Basket(sku="pear"))

    assert results[0].response == Priced(price=2.0)
    (step,) = _instances("act", PriceStep)
    assert isinstance(step, PriceStep)
    assert isinstance(step._prices, PriceService)
    assert step._audit is audit
    assert audit.lines == ["priced pear"]


async def test_act_events_and_compensate_see_one_instance_per_run(storage: EngineStorage) -> None:
    harness = make_harness((Basket, BasketSaga), storage=storage, domain_events_mapper=_events_mapper)
    saga_id = uuid.uuid4()

    with pytest.raises(RuntimeError, match="checkout refused"):
        await harness.run_all(Basket(sku="apple", fail_at_end=True), saga_id=saga_id)

    acted = _instances("act", PriceStep)
    evented = _instances("events", PriceStep)
    compensated = _instances("compensate", PriceStep)
    assert len(acted) == 1
    assert len(compensated) == 1
    assert evented, "the engine never asked the step for its events"
    assert all(obj is acted[0] for obj in evented)
    assert compensated[0] is acted[0]
    assert ("handled", PriceSet(sku="apple")) in SEEN
    assert await harness.status(saga_id) == SagaStatus.FAILED


async def test_each_run_gets_a_fresh_step_instance(storage: EngineStorage) -> None:
    harness = make_harness((Basket, BasketSaga), storage=storage)

    await harness.run_all(Basket(sku="apple"))
    await harness.run_all(Basket(sku="pear"))

    first, second = _instances("act", PriceStep)
    assert first is not second


class RecordingContainer:
    """Not a `di.Container`: just an object with ``async def resolve(type_)``."""

    def __init__(self) -> None:
        self.resolved: list[type[typing.Any]] = []
        self.audit = AuditLog()

    async def resolve(self, type_: type[T]) -> T:
        self.resolved.append(type_)
        if type_ is PriceStep:
            return typing.cast(T, PriceStep(PriceService(), self.audit))
        return type_()


async def test_a_custom_container_with_async_resolve_builds_the_steps(storage: EngineStorage) -> None:
    container = RecordingContainer()
    harness = make_harness((Basket, BasketSaga), storage=storage, container=container)
    saga_id = uuid.uuid4()

    with pytest.raises(RuntimeError, match="checkout refused"):
        await harness.run_all(Basket(sku="apple", fail_at_end=True), saga_id=saga_id)

    # Each step is resolved once for the run, compensation included.
    assert container.resolved == [PriceStep, MaybeFailStep]
    assert container.audit.lines == ["priced apple", "unpriced apple"]
    assert await harness.status(saga_id) == SagaStatus.FAILED


async def test_a_custom_container_also_completes_a_saga(storage: EngineStorage) -> None:
    container = RecordingContainer()
    harness = make_harness((Basket, BasketSaga), storage=storage, container=container)

    results = await harness.run_all(Basket(sku="pear"))

    assert [r.step_type for r in results] == [PriceStep, MaybeFailStep]
    assert container.audit.lines == ["priced pear"]
