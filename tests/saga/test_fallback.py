"""Requirement 10: fallback steps and the aiobreaker circuit breaker."""

from __future__ import annotations

import dataclasses
import datetime
import typing
import uuid

import pytest

from cqrs.adapters.circuit_breaker import AioBreakerAdapter
from cqrs.response import Response
from cqrs.saga.fallback import Fallback
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage, make_harness

LEDGER: list[str] = []
SEEN_BY_FALLBACK: list[dict[str, typing.Any]] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    LEDGER.clear()
    SEEN_BY_FALLBACK.clear()


class ServiceDown(ConnectionError):
    pass


class BusinessError(Exception):
    pass


ERRORS: dict[str, type[Exception]] = {
    "down": ServiceDown,
    "business": BusinessError,
    "value": ValueError,
}


@dataclasses.dataclass
class ReserveContext(SagaContext):
    order_id: str
    primary_error: str | None = "down"
    fail_at_end: bool = False
    reservation: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    meta: dict[str, str] = dataclasses.field(default_factory=dict)


class Reserved(Response):
    reservation: str
    source: str


class PrepareStep(SagaStepHandler[ReserveContext, Response]):
    async def act(self, context: ReserveContext) -> SagaStepResult[ReserveContext, Response]:
        LEDGER.append("act:prepare")
        context.notes.append("prepared")
        return self._generate_step_result(Response())

    async def compensate(self, context: ReserveContext) -> None:
        LEDGER.append("compensate:prepare")


class PrimaryReserve(SagaStepHandler[ReserveContext, Reserved]):
    async def act(self, context: ReserveContext) -> SagaStepResult[ReserveContext, Reserved]:
        LEDGER.append("act:primary")
        # Change the context, then fail: the fallback must not see these changes.
        context.reservation = "primary-half-done"
        context.notes.append("primary was here")
        context.meta["primary"] = "dirty"
        if context.primary_error is not None:
            raise ERRORS[context.primary_error](f"primary failed for {context.order_id}")
        return self._generate_step_result(Reserved(reservation="primary", source="primary"))

    async def compensate(self, context: ReserveContext) -> None:
        LEDGER.append("compensate:primary")


class FallbackReserve(SagaStepHandler[ReserveContext, Reserved]):
    async def act(self, context: ReserveContext) -> SagaStepResult[ReserveContext, Reserved]:
        LEDGER.append("act:fallback")
        SEEN_BY_FALLBACK.append(
            {"reservation": context.reservation, "notes": list(context.notes), "meta": dict(context.meta)}
        )
        context.reservation = f"fallback-{context.order_id}"
        return self._generate_step_result(Reserved(reservation=context.reservation, source="fallback"))

    async def compensate(self, context: ReserveContext) -> None:
        LEDGER.append(f"compensate:fallback {context.reservation}")


class FinishStep(SagaStepHandler[ReserveContext, Response]):
    async def act(self, context: ReserveContext) -> SagaStepResult[ReserveContext, Response]:
        LEDGER.append("act:finish")
        if context.fail_at_end:
            raise RuntimeError("finish failed")
        return self._generate_step_result(Response())


def _saga(fallback: Fallback) -> type[Saga[ReserveContext]]:
    """A fresh saga class per test, so breaker state never leaks between tests."""

    class ReserveSaga(Saga[ReserveContext]):
        steps = [PrepareStep, fallback, FinishStep]

    return ReserveSaga


async def test_fallback_runs_when_the_primary_raises_a_listed_exception(storage: EngineStorage) -> None:
    saga = _saga(Fallback(step=PrimaryReserve, fallback=FallbackReserve, failure_exceptions=(ConnectionError,)))
    harness = make_harness((ReserveContext, saga), storage=storage)
    saga_id = uuid.uuid4()

    results = await harness.run_all(ReserveContext(order_id="o1"), saga_id=saga_id)

    assert [r.step_type for r in results] == [PrepareStep, FallbackReserve, FinishStep]
    assert results[1].response == Reserved(reservation="fallback-o1", source="fallback")
    assert LEDGER == ["act:prepare", "act:primary", "act:fallback", "act:finish"]
    assert await harness.status(saga_id) == SagaStatus.COMPLETED
    history = await harness.storage.get_step_history(saga_id)
    assert [(e.step_name, e.action, e.status) for e in history] == [
        ("PrepareStep", "act", "completed"),
        ("FallbackReserve", "act", "completed"),
        ("FinishStep", "act", "completed"),
    ]


async def test_fallback_does_not_run_for_an_unlisted_exception(storage: EngineStorage) -> None:
    saga = _saga(Fallback(step=PrimaryReserve, fallback=FallbackReserve, failure_exceptions=(ConnectionError,)))
    harness = make_harness((ReserveContext, saga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(ValueError, match="primary failed for o2"):
        await harness.run_all(ReserveContext(order_id="o2", primary_error="value"), saga_id=saga_id)

    assert LEDGER == ["act:prepare", "act:primary", "compensate:prepare"]
    assert await harness.status(saga_id) == SagaStatus.FAILED
    assert ("PrimaryReserve", "act", "failed") in await harness.history(saga_id)


@pytest.mark.parametrize("error", ["down", "business", "value"])
async def test_without_listed_exceptions_any_exception_switches_to_the_fallback(
    error: str,
    storage: EngineStorage,
) -> None:
    saga = _saga(Fallback(step=PrimaryReserve, fallback=FallbackReserve))
    harness = make_harness((ReserveContext, saga), storage=storage)

    results = await harness.run_all(ReserveContext(order_id="o3", primary_error=error))

    assert [r.step_type for r in results] == [PrepareStep, FallbackReserve, FinishStep]
    assert LEDGER == ["act:prepare", "act:primary", "act:fallback", "act:finish"]


async def test_context_changes_of_the_failed_primary_are_undone_before_the_fallback(storage: EngineStorage) -> None:
    saga = _saga(Fallback(step=PrimaryReserve, fallback=FallbackReserve))
    harness = make_harness((ReserveContext, saga), storage=storage)
    saga_id = uuid.uuid4()
    context = ReserveContext(order_id="o4")

    await harness.run_all(context, saga_id=saga_id)

    assert SEEN_BY_FALLBACK == [{"reservation": None, "notes": ["prepared"], "meta": {}}]
    _, stored, _ = await harness.storage.load_saga_state(saga_id)
    assert stored["notes"] == ["prepared"]
    assert stored["meta"] == {}
    assert stored["reservation"] == "fallback-o4"
    assert context.notes == ["prepared"]


async def test_the_primary_that_succeeds_is_recorded_and_the_fallback_never_runs(storage: EngineStorage) -> None:
    saga = _saga(Fallback(step=PrimaryReserve, fallback=FallbackReserve))
    harness = make_harness((ReserveContext, saga), storage=storage)

    results = await harness.run_all(ReserveContext(order_id="o5", primary_error=None))

    assert [r.step_type for r in results] == [PrepareStep, PrimaryReserve, FinishStep]
    assert LEDGER == ["act:prepare", "act:primary", "act:finish"]


async def test_when_the_saga_fails_later_the_fallback_is_compensated_not_the_primary(storage: EngineStorage) -> None:
    saga = _saga(Fallback(step=PrimaryReserve, fallback=FallbackReserve))
    harness = make_harness((ReserveContext, saga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(RuntimeError, match="finish failed"):
        await harness.run_all(ReserveContext(order_id="o6", fail_at_end=True), saga_id=saga_id)

    assert LEDGER == [
        "act:prepare", "act:primary", "act:fallback", "act:finish",
        "compensate:fallback fallback-o6", "compensate:prepare",
    ]
    assert await harness.status(saga_id) == SagaStatus.FAILED
    assert await harness.history(saga_id) == [
        ("PrepareStep", "act", "completed"),
        ("FallbackReserve", "act", "completed"),
        ("FinishStep", "act", "failed"),
        ("FallbackReserve", "compensate", "compensated"),
        ("PrepareStep", "compensate", "compensated"),
    ]


async def test_a_paused_saga_whose_fallback_completed_compensates_the_fallback_after_resuming(
    storage: EngineStorage,
) -> None:
    saga = _saga(Fallback(step=PrimaryReserve, fallback=FallbackReserve))
    harness = make_harness((ReserveContext, saga), storage=storage)
    saga_id = uuid.uuid4()

    async for result in harness.mediator.stream(ReserveContext(order_id="o7", fail_at_end=True), saga_id=saga_id):
        if result.step_type is FallbackReserve:
            break
    with pytest.raises(RuntimeError, match="finish failed"):
        await harness.run_all(ReserveContext(order_id="ignored"), saga_id=saga_id)

    assert "compensate:primary" not in LEDGER
    assert LEDGER[-2:] == ["compensate:fallback fallback-o7", "compensate:prepare"]


# -- circuit breaker ------------------------------------------------------------------------


async def test_after_fail_max_failures_the_open_breaker_skips_the_primary(storage: EngineStorage) -> None:
    saga = _saga(
        Fallback(
            step=PrimaryReserve,
            fallback=FallbackReserve,
            circuit_breaker=AioBreakerAdapter(fail_max=2, timeout_duration=60),
        )
    )
    harness = make_harness((ReserveContext, saga), storage=storage)
    per_run: list[list[str]] = []

    for n in range(4):
        LEDGER.clear()
        results = await harness.run_all(ReserveContext(order_id=f"cb{n}"))
        assert results[1].step_type is FallbackReserve
        per_run.append(list(LEDGER))

    with_primary = ["act:prepare", "act:primary", "act:fallback", "act:finish"]
    without_primary = ["act:prepare", "act:fallback", "act:finish"]
    assert per_run == [with_primary, with_primary, without_primary, without_primary]


async def test_an_open_breaker_still_lets_the_fallback_see_a_clean_context(storage: EngineStorage) -> None:
    saga = _saga(
        Fallback(
            step=PrimaryReserve,
            fallback=FallbackReserve,
            circuit_breaker=AioBreakerAdapter(fail_max=2, timeout_duration=60),
        )
    )
    harness = make_harness((ReserveContext, saga), storage=storage)

    for n in range(3):
        await harness.run_all(ReserveContext(order_id=f"clean{n}"))

    assert SEEN_BY_FALLBACK == [{"reservation": None, "notes": ["prepared"], "meta": {}}] * 3


async def test_excluded_business_errors_do_not_trip_the_breaker(storage: EngineStorage) -> None:
    saga = _saga(
        Fallback(
            step=PrimaryReserve,
            fallback=FallbackReserve,
            circuit_breaker=AioBreakerAdapter(fail_max=2, timeout_duration=60, exclude=[BusinessError]),
        )
    )
    harness = make_harness((ReserveContext, saga), storage=storage)

    for n in range(5):
        await harness.run_all(ReserveContext(order_id=f"b{n}", primary_error="business"))

    assert LEDGER.count("act:primary") == 5
    assert LEDGER.count("act:fallback") == 5

    # Real failures still count: two of them open it.
    for n in range(3):
        await harness.run_all(ReserveContext(order_id=f"d{n}", primary_error="down"))
    assert LEDGER.count("act:primary") == 7


async def test_with_a_breaker_an_unlisted_exception_still_fails_the_saga(storage: EngineStorage) -> None:
    saga = _saga(
        Fallback(
            step=PrimaryReserve,
            fallback=FallbackReserve,
            failure_exceptions=(ServiceDown,),
            circuit_breaker=AioBreakerAdapter(fail_max=5, timeout_duration=60),
        )
    )
    harness = make_harness((ReserveContext, saga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(ValueError, match="primary failed"):
        await harness.run_all(ReserveContext(order_id="u1", primary_error="value"), saga_id=saga_id)

    assert "act:fallback" not in LEDGER
    assert await harness.status(saga_id) == SagaStatus.FAILED


async def test_after_the_breaker_timeout_the_primary_gets_a_trial_call(storage: EngineStorage) -> None:
    saga = _saga(
        Fallback(
            step=PrimaryReserve,
            fallback=FallbackReserve,
            circuit_breaker=AioBreakerAdapter(fail_max=2, timeout_duration=datetime.timedelta(0)),
        )
    )
    harness = make_harness((ReserveContext, saga), storage=storage)

    await harness.run_all(ReserveContext(order_id="t0"))
    await harness.run_all(ReserveContext(order_id="t1"))  # opens the breaker
    LEDGER.clear()
    # The open period (zero seconds) is over: the breaker is half-open and lets the primary try.
    results = await harness.run_all(ReserveContext(order_id="t2", primary_error=None))

    assert LEDGER == ["act:prepare", "act:primary", "act:finish"]
    assert results[1].step_type is PrimaryReserve


@dataclasses.dataclass
class QuoteContext(SagaContext):
    order_id: str


class LiveStock(SagaStepHandler[QuoteContext, Response]):
    async def act(self, context: QuoteContext) -> SagaStepResult[QuoteContext, Response]:
        LEDGER.append("act:live_stock")
        raise ServiceDown("stock service down")


class CachedStock(SagaStepHandler[QuoteContext, Response]):
    async def act(self, context: QuoteContext) -> SagaStepResult[QuoteContext, Response]:
        LEDGER.append("act:cached_stock")
        return self._generate_step_result(Response())


class LivePrice(SagaStepHandler[QuoteContext, Response]):
    async def act(self, context: QuoteContext) -> SagaStepResult[QuoteContext, Response]:
        LEDGER.append("act:live_price")
        return self._generate_step_result(Response())


class CachedPrice(SagaStepHandler[QuoteContext, Response]):
    async def act(self, context: QuoteContext) -> SagaStepResult[QuoteContext, Response]:
        LEDGER.append("act:cached_price")
        return self._generate_step_result(Response())


async def test_one_adapter_shared_by_two_steps_keeps_one_breaker_per_step(storage: EngineStorage) -> None:
    """One AioBreakerAdapter guards two steps: the failing step's breaker opens, the other step's primary still runs.

    (One breaker for both would never open here: the other step's successes reset its failure count.)
    """
    breaker = AioBreakerAdapter(fail_max=2, timeout_duration=60)

    class QuoteSaga(Saga[QuoteContext]):
        steps = [
            Fallback(step=LiveStock, fallback=CachedStock, circuit_breaker=breaker),
            Fallback(step=LivePrice, fallback=CachedPrice, circuit_breaker=breaker),
        ]

    harness = make_harness((QuoteContext, QuoteSaga), storage=storage)
    per_run: list[list[str]] = []

    for n in range(3):
        LEDGER.clear()
        results = await harness.run_all(QuoteContext(order_id=f"q{n}"))
        assert [r.step_type for r in results] == [CachedStock, LivePrice]
        per_run.append(list(LEDGER))

    both_primaries = ["act:live_stock", "act:cached_stock", "act:live_price"]
    stock_breaker_open = ["act:cached_stock", "act:live_price"]
    assert per_run == [both_primaries, both_primaries, stock_breaker_open]
    assert breaker.is_open("LiveStock")
    assert not breaker.is_open("LivePrice")


@dataclasses.dataclass
class PriceContext(QuoteContext):
    pass


async def test_one_adapter_shared_by_two_sagas_keeps_one_breaker_per_step(storage: EngineStorage) -> None:
    """One AioBreakerAdapter guards a step in each of two sagas: the first saga's failures open its step's breaker
    only, and the second saga's primary still runs."""
    breaker = AioBreakerAdapter(fail_max=2, timeout_duration=60)

    class StockSaga(Saga[QuoteContext]):
        steps = [Fallback(step=LiveStock, fallback=CachedStock, circuit_breaker=breaker)]

    class PriceSaga(Saga[PriceContext]):
        steps = [Fallback(step=LivePrice, fallback=CachedPrice, circuit_breaker=breaker)]

    harness = make_harness((QuoteContext, StockSaga), (PriceContext, PriceSaga), storage=storage)
    for n in range(3):
        await harness.run_all(QuoteContext(order_id=f"s{n}"))
    assert LEDGER.count("act:live_stock") == 2  # open after two failures: the third run went to the fallback
    assert breaker.is_open("LiveStock")
    LEDGER.clear()

    results = await harness.run_all(PriceContext(order_id="p0"))

    assert [r.step_type for r in results] == [LivePrice]
    assert LEDGER == ["act:live_price"]
    assert not breaker.is_open("LivePrice")
