"""Requirement 4: failure compensates completed steps newest first, with configurable retries."""

from __future__ import annotations

import dataclasses
import typing
import uuid

import pytest

from cqrs.response import Response
from cqrs.saga.exceptions import ContextSerializationError
from cqrs.saga.models import SagaContext
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage, make_harness

LEDGER: list[str] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    LEDGER.clear()


class PaymentDeclined(Exception):
    pass


@dataclasses.dataclass
class TripContext(SagaContext):
    trip_id: str
    # How many times each step's compensation fails before it succeeds (-1: always).
    compensation_failures: dict[str, int] = dataclasses.field(default_factory=dict)
    flight: str | None = None
    hotel: str | None = None


class _Step(SagaStepHandler[TripContext, Response]):
    async def act(self, context: TripContext) -> SagaStepResult[TripContext, Response]:
        LEDGER.append(f"act:{self.name}")
        return self._generate_step_result(Response())

    async def compensate(self, context: TripContext) -> None:
        LEDGER.append(f"compensate:{self.name}")
        left = context.compensation_failures.get(self.name, 0)
        if left != 0:
            context.compensation_failures[self.name] = left - 1 if left > 0 else left
            raise ConnectionError(f"cannot undo {self.name}")


class FlightStep(_Step):
    name = "flight"

    async def act(self, context: TripContext) -> SagaStepResult[TripContext, Response]:
        context.flight = "LH123"
        return await super().act(context)


class HotelStep(_Step):
    name = "hotel"

    async def act(self, context: TripContext) -> SagaStepResult[TripContext, Response]:
        context.hotel = "Ritz"
        return await super().act(context)


class CarStep(_Step):
    name = "car"


class PaymentStep(_Step):
    name = "payment"

    async def act(self, context: TripContext) -> SagaStepResult[TripContext, Response]:
        LEDGER.append("act:payment")
        raise PaymentDeclined(f"card declined for {context.trip_id}")


class TripSaga(Saga[TripContext]):
    steps = [FlightStep, HotelStep, CarStep, PaymentStep]


class PatientTripSaga(Saga[TripContext]):
    name = "patient-trip"
    steps = [FlightStep, HotelStep, CarStep, PaymentStep]
    compensation_retry = RetryPolicy(attempts=4, delay=0.5, backoff=3.0)


@dataclasses.dataclass
class PatientTripContext(TripContext):
    pass


async def test_completed_steps_are_compensated_newest_first_and_the_error_reaches_the_caller(
    storage: EngineStorage,
) -> None:
    harness = make_harness((TripContext, TripSaga), storage=storage)
    saga_id = uuid.uuid4()
    received = []

    with pytest.raises(PaymentDeclined) as caught:
        async for result in harness.mediator.stream(TripContext(trip_id="t1"), saga_id=saga_id):
            received.append(result.step_type)

    assert type(caught.value) is PaymentDeclined
    assert str(caught.value) == "card declined for t1"
    assert received == [FlightStep, HotelStep, CarStep]
    assert LEDGER == [
        "act:flight", "act:hotel", "act:car", "act:payment",
        "compensate:car", "compensate:hotel", "compensate:flight",
    ]
    assert await harness.status(saga_id) == SagaStatus.FAILED
    assert await harness.history(saga_id) == [
        ("flight", "act", "completed"),
        ("hotel", "act", "completed"),
        ("car", "act", "completed"),
        ("payment", "act", "failed"),
        ("car", "compensate", "compensated"),
        ("hotel", "compensate", "compensated"),
        ("flight", "compensate", "compensated"),
    ]
    assert harness.sleep.delays == []


async def test_compensation_sees_the_context_as_the_completed_steps_left_it(storage: EngineStorage) -> None:
    seen: list[tuple[str | None, str | None]] = []

    class Spy(FlightStep):
        name = "spy-flight"

        async def compensate(self, context: TripContext) -> None:
            seen.append((context.flight, context.hotel))

    class SpySaga(Saga[TripContext]):
        steps = [Spy, HotelStep, PaymentStep]

    harness = make_harness((TripContext, SpySaga), storage=storage)
    with pytest.raises(PaymentDeclined):
        await harness.run_all(TripContext(trip_id="t2"))

    assert seen == [("LH123", "Ritz")]


async def test_failing_first_step_fails_the_saga_without_compensating_anything(storage: EngineStorage) -> None:
    class OnlyPayment(Saga[TripContext]):
        steps = [PaymentStep]

    harness = make_harness((TripContext, OnlyPayment), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(PaymentDeclined):
        await harness.run_all(TripContext(trip_id="t3"), saga_id=saga_id)

    assert LEDGER == ["act:payment"]
    assert await harness.status(saga_id) == SagaStatus.FAILED
    assert await harness.history(saga_id) == [("payment", "act", "failed")]


async def test_a_compensation_that_keeps_failing_ends_compensation_failed_and_the_others_still_run(
    storage: EngineStorage,
) -> None:
    harness = make_harness(
        (TripContext, TripSaga),
        storage=storage,
        compensation_retry_count=3,
        compensation_retry_delay=0.25,
        compensation_retry_backoff=2.0,
    )
    saga_id = uuid.uuid4()

    with pytest.raises(PaymentDeclined, match="card declined for t4"):
        await harness.run_all(TripContext(trip_id="t4", compensation_failures={"hotel": -1}), saga_id=saga_id)

    assert LEDGER == [
        "act:flight", "act:hotel", "act:car", "act:payment",
        "compensate:car",
        "compensate:hotel", "compensate:hotel", "compensate:hotel",
        "compensate:flight",
    ]
    assert harness.sleep.delays == [0.25, 0.5]
    assert await harness.status(saga_id) == SagaStatus.COMPENSATION_FAILED
    history = await harness.storage.get_step_history(saga_id)
    assert [(e.step_name, e.action, e.status) for e in history[4:]] == [
        ("car", "compensate", "compensated"),
        ("hotel", "compensate", "failed"),
        ("flight", "compensate", "compensated"),
    ]
    assert "cannot undo hotel" in (history[5].details or "")


async def test_a_compensation_that_recovers_within_its_retries_ends_failed(storage: EngineStorage) -> None:
    harness = make_harness(
        (TripContext, TripSaga),
        storage=storage,
        compensation_retry_count=5,
        compensation_retry_delay=0.1,
        compensation_retry_backoff=3.0,
    )
    saga_id = uuid.uuid4()

    with pytest.raises(PaymentDeclined):
        await harness.run_all(TripContext(trip_id="t5", compensation_failures={"car": 3}), saga_id=saga_id)

    assert LEDGER.count("compensate:car") == 4
    assert harness.sleep.delays == pytest.approx([0.1, 0.3, 0.9])
    assert await harness.status(saga_id) == SagaStatus.FAILED


async def test_default_compensation_retry_is_three_tries_waiting_one_then_two_seconds(storage: EngineStorage) -> None:
    harness = make_harness((TripContext, TripSaga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(PaymentDeclined):
        await harness.run_all(TripContext(trip_id="t6", compensation_failures={"flight": -1}), saga_id=saga_id)

    assert LEDGER.count("compensate:flight") == 3
    assert harness.sleep.delays == [1.0, 2.0]
    assert await harness.status(saga_id) == SagaStatus.COMPENSATION_FAILED


async def test_per_call_compensation_retry_overrides_bootstrap_settings(storage: EngineStorage) -> None:
    harness = make_harness(
        (TripContext, TripSaga),
        storage=storage,
        compensation_retry_count=2,
        compensation_retry_delay=9.0,
        compensation_retry_backoff=9.0,
    )

    with pytest.raises(PaymentDeclined):
        await harness.run_all(
            TripContext(trip_id="t7", compensation_failures={"hotel": -1}),
            compensation_retry=RetryPolicy(attempts=4, delay=0.05, backoff=2.0),
        )

    assert LEDGER.count("compensate:hotel") == 4
    assert harness.sleep.delays == pytest.approx([0.05, 0.1, 0.2])


async def test_per_saga_compensation_retry_overrides_bootstrap_settings(storage: EngineStorage) -> None:
    harness = make_harness(
        (PatientTripContext, PatientTripSaga),
        storage=storage,
        compensation_retry_count=2,
        compensation_retry_delay=9.0,
        compensation_retry_backoff=9.0,
    )

    with pytest.raises(PaymentDeclined):
        await harness.run_all(PatientTripContext(trip_id="t8", compensation_failures={"hotel": -1}))

    assert LEDGER.count("compensate:hotel") == 4
    assert harness.sleep.delays == pytest.approx([0.5, 1.5, 4.5])


async def test_per_call_compensation_retry_beats_the_sagas_own(storage: EngineStorage) -> None:
    harness = make_harness((PatientTripContext, PatientTripSaga), storage=storage)

    with pytest.raises(PaymentDeclined):
        await harness.run_all(
            PatientTripContext(trip_id="t9", compensation_failures={"hotel": -1}),
            compensation_retry=RetryPolicy(attempts=2, delay=0.01, backoff=1.0),
        )

    assert LEDGER.count("compensate:hotel") == 2
    assert harness.sleep.delays == [0.01]


async def test_compensation_retry_delays_are_capped_by_max_delay(storage: EngineStorage) -> None:
    harness = make_harness((TripContext, TripSaga), storage=storage)

    with pytest.raises(PaymentDeclined):
        await harness.run_all(
            TripContext(trip_id="t10", compensation_failures={"car": -1}),
            compensation_retry=RetryPolicy(attempts=5, delay=1.0, backoff=10.0, max_delay=50.0),
        )

    assert harness.sleep.delays == [1.0, 10.0, 50.0, 50.0]


class Opaque(Response):
    """A response whose ``blob`` may hold something JSON cannot take."""

    blob: typing.Any = None


class OpaqueStep(SagaStepHandler[TripContext, Opaque]):
    name = "opaque"

    async def act(self, context: TripContext) -> SagaStepResult[TripContext, Opaque]:
        LEDGER.append("act:opaque")
        return self._generate_step_result(Opaque(blob=object()))

    async def compensate(self, context: TripContext) -> None:
        LEDGER.append("compensate:opaque")


class OpaqueSaga(Saga[TripContext]):
    steps = [FlightStep, OpaqueStep, CarStep]


async def test_a_step_response_that_cannot_be_stored_fails_the_saga_and_compensates(storage: EngineStorage) -> None:
    harness = make_harness((TripContext, OpaqueSaga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(ContextSerializationError):
        await harness.run_all(TripContext(trip_id="t11"), saga_id=saga_id)

    assert "act:car" not in LEDGER
    assert "compensate:flight" in LEDGER
    assert LEDGER[-1] == "compensate:flight"
    assert await harness.status(saga_id) == SagaStatus.FAILED
