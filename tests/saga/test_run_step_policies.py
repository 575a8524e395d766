"""Requirement 5: step retry policies, step timeouts and saga deadlines."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from cqrs.response import Response
from cqrs.saga.exceptions import SagaDeadlineExceededError, SagaStepTimeoutError
from cqrs.saga.models import SagaContext
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage, make_harness

LEDGER: list[str] = []


async def wait_forever() -> None:
    """Await an `asyncio.Event` that nobody ever sets."""
    await asyncio.Event().wait()


@pytest.fixture(autouse=True)
def _clear() -> None:
    LEDGER.clear()


class Flaky(ConnectionError):
    pass


class Fatal(ValueError):
    pass


@dataclasses.dataclass
class JobContext(SagaContext):
    # Exceptions the flaky step raises, one per attempt, before it succeeds.
    failures: list[str] = dataclasses.field(default_factory=list)
    done: bool = False


ERRORS: dict[str, type[Exception]] = {"flaky": Flaky, "fatal": Fatal}


class PrepareStep(SagaStepHandler[JobContext, Response]):
    async def act(self, context: JobContext) -> SagaStepResult[JobContext, Response]:
        LEDGER.append("act:prepare")
        return self._generate_step_result(Response())

    async def compensate(self, context: JobContext) -> None:
        LEDGER.append("compensate:prepare")


class FlakyStep(SagaStepHandler[JobContext, Response]):
    retry = RetryPolicy(attempts=4, delay=0.2, backoff=3.0, retry_on=(ConnectionError,))

    async def act(self, context: JobContext) -> SagaStepResult[JobContext, Response]:
        LEDGER.append("act:flaky")
        if context.failures:
            raise ERRORS[context.failures.pop(0)]("attempt failed")
        context.done = True
        return self._generate_step_result(Response())


class RetrySaga(Saga[JobContext]):
    steps = [PrepareStep, FlakyStep]


async def test_listed_exceptions_are_retried_with_exponential_delays(storage: EngineStorage) -> None:
    harness = make_harness((JobContext, RetrySaga), storage=storage)
    saga_id = uuid.uuid4()

    results = await harness.run_all(JobContext(failures=["flaky", "flaky", "flaky"]), saga_id=saga_id)

    assert [r.step_type for r in results] == [PrepareStep, FlakyStep]
    assert LEDGER == ["act:prepare"] + ["act:flaky"] * 4
    assert harness.sleep.delays == pytest.approx([0.2, 0.6, 1.8])
    assert await harness.status(saga_id) == SagaStatus.COMPLETED
    # Retries are not separate history rows: one completed act per step.
    assert await harness.history(saga_id) == [
        ("PrepareStep", "act", "completed"),
        ("FlakyStep", "act", "completed"),
    ]


async def test_retries_stop_after_the_configured_attempts_and_the_saga_fails(storage: EngineStorage) -> None:
    harness = make_harness((JobContext, RetrySaga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(Flaky):
        await harness.run_all(JobContext(failures=["flaky"] * 10), saga_id=saga_id)

    assert LEDGER == ["act:prepare"] + ["act:flaky"] * 4 + ["compensate:prepare"]
    assert harness.sleep.delays == pytest.approx([0.2, 0.6, 1.8])
    assert await harness.status(saga_id) == SagaStatus.FAILED


async def test_unlisted_exceptions_are_not_retried(storage: EngineStorage) -> None:
    harness = make_harness((JobContext, RetrySaga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(Fatal):
        await harness.run_all(JobContext(failures=["fatal"]), saga_id=saga_id)

    assert LEDGER == ["act:prepare", "act:flaky", "compensate:prepare"]
    assert harness.sleep.delays == []
    assert await harness.status(saga_id) == SagaStatus.FAILED


async def test_an_unlisted_exception_after_retries_stops_retrying_at_once(storage: EngineStorage) -> None:
    harness = make_harness((JobContext, RetrySaga), storage=storage)

    with pytest.raises(Fatal):
        await harness.run_all(JobContext(failures=["flaky", "fatal", "flaky"]))

    assert LEDGER.count("act:flaky") == 2
    assert harness.sleep.delays == pytest.approx([0.2])


async def test_a_step_without_retry_policy_runs_once(storage: EngineStorage) -> None:
    class OneShot(SagaStepHandler[JobContext, Response]):
        async def act(self, context: JobContext) -> SagaStepResult[JobContext, Response]:
            LEDGER.append("act:oneshot")
            raise Flaky("no retry for me")

    class OneShotSaga(Saga[JobContext]):
        steps = [PrepareStep, OneShot]

    harness = make_harness((JobContext, OneShotSaga), storage=storage)
    with pytest.raises(Flaky):
        await harness.run_all(JobContext())

    assert LEDGER == ["act:prepare", "act:oneshot", "compensate:prepare"]
    assert harness.sleep.delays == []


# -- timeouts and deadlines ---------------------------------------------------------------


class HangingStep(SagaStepHandler[JobContext, Response]):
    timeout = 0.05

    async def act(self, context: JobContext) -> SagaStepResult[JobContext, Response]:
        LEDGER.append("act:hanging")
        await wait_forever()
        LEDGER.append("act:hanging finished")
        return self._generate_step_result(Response())


class TimeoutSaga(Saga[JobContext]):
    steps = [PrepareStep, HangingStep]


async def test_a_step_past_its_timeout_fails_with_step_timeout_and_compensation_runs(storage: EngineStorage) -> None:
    harness = make_harness((JobContext, TimeoutSaga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(SagaStepTimeoutError):
        await harness.run_all(JobContext(), saga_id=saga_id)

    assert LEDGER == ["act:prepare", "act:hanging", "compensate:prepare"]
    assert await harness.status(saga_id) == SagaStatus.FAILED
    history = await harness.storage.get_step_history(saga_id)
    assert [(e.step_name, e.action, e.status) for e in history] == [
        ("PrepareStep", "act", "completed"),
        ("HangingStep", "act", "failed"),
        ("PrepareStep", "compensate", "compensated"),
    ]
    assert "SagaStepTimeoutError" in (history[1].details or "")


class SlowStep(SagaStepHandler[JobContext, Response]):
    async def act(self, context: JobContext) -> SagaStepResult[JobContext, Response]:
        LEDGER.append("act:slow")
        await wait_forever()
        return self._generate_step_result(Response())


class DeadlineSaga(Saga[JobContext]):
    deadline = 0.05
    steps = [PrepareStep, SlowStep]


async def test_passing_the_saga_deadline_fails_the_running_step_and_compensates(storage: EngineStorage) -> None:
    harness = make_harness((JobContext, DeadlineSaga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(SagaDeadlineExceededError):
        await harness.run_all(JobContext(), saga_id=saga_id)

    assert LEDGER == ["act:prepare", "act:slow", "compensate:prepare"]
    assert await harness.status(saga_id) == SagaStatus.FAILED
    assert await harness.history(saga_id) == [
        ("PrepareStep", "act", "completed"),
        ("SlowStep", "act", "failed"),
        ("PrepareStep", "compensate", "compensated"),
    ]


class ExpiredSaga(Saga[JobContext]):
    deadline = 0
    steps = [PrepareStep, SlowStep]


async def test_a_zero_deadline_fails_before_any_step_runs(storage: EngineStorage) -> None:
    harness = make_harness((JobContext, ExpiredSaga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(SagaDeadlineExceededError):
        await harness.run_all(JobContext(), saga_id=saga_id)

    assert LEDGER == []
    assert await harness.status(saga_id) == SagaStatus.FAILED
    assert await harness.history(saga_id) == [("PrepareStep", "act", "failed")]


class TimeoutRetryStep(SagaStepHandler[JobContext, Response]):
    timeout = 0.02
    retry = RetryPolicy(attempts=2, delay=0.5, retry_on=(TimeoutError,))

    async def act(self, context: JobContext) -> SagaStepResult[JobContext, Response]:
        LEDGER.append("act:timeout-retry")
        if len(LEDGER) == 1:
            await wait_forever()
        return self._generate_step_result(Response())


class TimeoutRetrySaga(Saga[JobContext]):
    steps = [TimeoutRetryStep]


async def test_a_timed_out_attempt_is_retried_when_the_policy_lists_timeouts(storage: EngineStorage) -> None:
    harness = make_harness((JobContext, TimeoutRetrySaga), storage=storage)
    saga_id = uuid.uuid4()

    await harness.run_all(JobContext(), saga_id=saga_id)

    assert LEDGER == ["act:timeout-retry", "act:timeout-retry"]
    assert harness.sleep.delays == [0.5]
    assert await harness.status(saga_id) == SagaStatus.COMPLETED
