"""Our own tests written with the pytest plugin users get (`cqrs.testing`): crashes, lost leases, duplicates."""

from __future__ import annotations

import typing

import pytest

from cqrs.saga.retry import RetryPolicy
from cqrs.saga.storage.enums import SagaStatus
from cqrs.testing import FakeClock, FakeSleep, InjectedFault, SagaHarness
from shop_saga import STEP_NAMES, Declined, ReservationReleased, ShopContext, ShopSaga, StepDone

Factory = typing.Callable[..., SagaHarness]
ONCE = RetryPolicy(attempts=1)


@pytest.fixture(params=["memory", "sqlite"])
def harness(request: pytest.FixtureRequest) -> SagaHarness:
    """A harness over `ShopSaga`, on memory storage and on a fresh SQLite file."""
    factory: Factory = request.getfixturevalue("saga_harness" if request.param == "memory" else "sqlite_saga_harness")
    return factory(ShopSaga, compensation_retry=ONCE)


async def test_a_saga_completes_with_its_events(harness: SagaHarness) -> None:
    outcome = await harness.run(ShopContext("o-1"))
    await harness.assert_saga(
        outcome.saga_id, status="completed", steps=STEP_NAMES, compensated=[], events=[StepDone, StepDone, StepDone]
    )


async def test_a_failing_step_is_compensated(harness: SagaHarness) -> None:
    outcome = await harness.run(ShopContext("o-2", fail_at="ship"))
    assert isinstance(outcome.error, Declined)
    await harness.assert_saga(
        outcome.saga_id,
        status=SagaStatus.FAILED,
        steps=["reserve", "charge"],
        compensated=["charge", "reserve"],
        events=[StepDone, StepDone, ReservationReleased("o-2")],
    )


async def test_an_injected_failure_of_step_n(harness: SagaHarness) -> None:
    harness.fail_step(2)
    outcome = await harness.run(ShopContext("o-3"))
    assert isinstance(outcome.error, InjectedFault)
    await harness.assert_saga(outcome.saga_id, status="failed", steps=["reserve"], compensated=["reserve"])


@pytest.mark.parametrize(
    ("crash", "steps"),
    [
        ("crash_before", ["reserve", "charge", "ship"]),
        ("crash_before_commit", ["reserve", "charge", "charge", "ship"]),
        ("crash_after_commit", ["reserve", "charge", "ship"]),
    ],
)
async def test_a_crash_at_step_2_is_finished_by_recovery(harness: SagaHarness, crash: str, steps: list[str]) -> None:
    getattr(harness, crash)("charge")
    outcome = await harness.run(ShopContext("o-4"))
    assert outcome.status == SagaStatus.RUNNING
    assert await harness.recover() == 1
    await harness.assert_saga(outcome.saga_id, status="completed", steps=steps)


async def test_a_lease_lost_mid_step_stops_the_run_and_recovery_runs_the_step_again(harness: SagaHarness) -> None:
    harness.lose_lease("charge")
    outcome = await harness.run(ShopContext("o-5"))
    assert outcome.status == SagaStatus.RUNNING
    assert harness.recording(outcome.saga_id).lease_losses == 1
    assert await harness.recover() == 1
    await harness.assert_saga(outcome.saga_id, status="completed", steps=["reserve", "charge", "charge", "ship"])


async def test_a_trigger_delivered_twice_starts_one_saga(harness: SagaHarness) -> None:
    first, second = await harness.deliver("order_placed", {"order_id": "o-6"}, times=2)
    assert (first.status, second.status) == ("accepted", "duplicate")
    (saga,) = first.sagas
    assert second.sagas[0].saga_id == saga.saga_id
    await harness.assert_saga(saga.saga_id, status="completed", steps=STEP_NAMES)


async def test_compensation_backoff_takes_no_real_time(saga_harness: Factory, saga_sleep: FakeSleep) -> None:
    backoff = RetryPolicy(attempts=3, delay=60.0, backoff=2.0, max_delay=600.0)
    harness = saga_harness(ShopSaga, compensation_retry=backoff)
    harness.fail_step("reserve", compensation=True, times=2)
    outcome = await harness.run(ShopContext("o-7", fail_at="charge"))
    await harness.assert_saga(outcome.saga_id, status="failed", compensated=["reserve"])
    assert saga_sleep.delays == [60.0, 120.0]


async def test_leases_lapse_when_the_clock_moves(saga_harness: Factory, saga_clock: FakeClock) -> None:
    harness = saga_harness(ShopSaga)
    saga_id = await harness.mediator.start(ShopContext("o-8"))
    assert await harness.mediator.recovery_worker().run_once() == 0  # the lease holds
    saga_clock.advance(31)
    assert await harness.mediator.recovery_worker().run_once() == 1
    await harness.assert_saga(saga_id, status="completed", steps=STEP_NAMES)


async def test_a_wrong_expectation_names_every_difference(saga_harness: Factory) -> None:
    harness = saga_harness(ShopSaga, compensation_retry=ONCE)
    outcome = await harness.run(ShopContext("o-9", fail_at="charge"))
    with pytest.raises(AssertionError) as raised:
        await harness.assert_saga(outcome.saga_id, status="completed", steps=STEP_NAMES, events=[StepDone])
    message = str(raised.value)
    assert f"Saga {outcome.saga_id} (ShopSaga) did not go as expected (error: Declined: " in message
    assert "status: expected 'completed', got 'failed'" in message
    assert "steps run: expected ['reserve', 'charge', 'ship'], got ['reserve']" in message
    assert "events: expected ['StepDone'], got [\"StepDone(order_id='o-9', step='reserve')\", " in message
    assert "act charge (attempt 1): Declined: charge declined order o-9" in message
