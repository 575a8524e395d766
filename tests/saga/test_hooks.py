"""Run hooks (`cqrs.saga.hooks`): every hook point, in order, on every kind of run.

Hooks and steps write to one log, so each test shows where the hook calls fall
between the steps' own actions.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import typing
import uuid

import pytest

from cqrs import correlation
from cqrs.response import Response
from cqrs.saga._hookset import HOOK_METHODS, HookSet
from cqrs.saga.exceptions import SagaCompensatedError, SagaOwnershipLostError
from cqrs.saga.fallback import Fallback
from cqrs.saga.hooks import ListenerHook, RunInfo, SagaEvent, SagaHook
from cqrs.saga.models import SagaContext
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage, advance, make_harness

LEASE = 30.0
#: What the hooks and the steps did, in order.
log: list[tuple[typing.Any, ...]] = []
#: Run inside `Held.act` (set by the lease test): what happens while the step runs.
DURING_HELD: list[typing.Callable[[], typing.Awaitable[None]]] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    log.clear()
    DURING_HELD.clear()


# -- the saga -------------------------------------------------------------------------------------


class Declined(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Reserved:
    trip_id: str


@dataclasses.dataclass
class TripContext(SagaContext):
    trip_id: str = "t"
    #: How many attempts of Book's act fail (it is tried three times).
    book_failures: int = 0
    pay_fails: bool = False
    #: How many attempts of Reserve's compensation fail (-1: all of them).
    unreserve_failures: int = 0


class Reserve(SagaStepHandler[TripContext, Response]):
    def __init__(self) -> None:
        self._events: list[object] = []

    async def act(self, context: TripContext) -> SagaStepResult[TripContext, Response]:
        log.append(("act", "Reserve"))
        self._events.append(Reserved(context.trip_id))
        return self._generate_step_result(Response())

    async def compensate(self, context: TripContext) -> None:
        log.append(("compensate", "Reserve"))
        if context.unreserve_failures:
            context.unreserve_failures -= 1
            raise ConnectionError("reservations down")


class Book(SagaStepHandler[TripContext, Response]):
    retry = RetryPolicy(attempts=3, delay=0.1, retry_on=(ConnectionError,))

    async def act(self, context: TripContext) -> SagaStepResult[TripContext, Response]:
        log.append(("act", "Book"))
        if context.book_failures:
            context.book_failures -= 1
            raise ConnectionError("booking timed out")
        return self._generate_step_result(Response())

    async def compensate(self, context: TripContext) -> None:
        log.append(("compensate", "Book"))


class Pay(SagaStepHandler[TripContext, Response]):
    async def act(self, context: TripContext) -> SagaStepResult[TripContext, Response]:
        log.append(("act", "Pay"))
        if context.pay_fails:
            raise Declined("card declined")
        return self._generate_step_result(Response())


class TripSaga(Saga[TripContext]):
    steps = [Reserve, Book, Pay]


@dataclasses.dataclass
class CardContext(SagaContext):
    card: str = "c"


class ChargeCard(SagaStepHandler[CardContext, Response]):
    async def act(self, context: CardContext) -> SagaStepResult[CardContext, Response]:
        log.append(("act", "ChargeCard"))
        raise Declined("card declined")


class ChargeInvoice(SagaStepHandler[CardContext, Response]):
    async def act(self, context: CardContext) -> SagaStepResult[CardContext, Response]:
        log.append(("act", "ChargeInvoice"))
        return self._generate_step_result(Response())


class ChargeSaga(Saga[CardContext]):
    steps = [Fallback(step=ChargeCard, fallback=ChargeInvoice)]


@dataclasses.dataclass
class HeldContext(SagaContext):
    job: str = "j"


class Held(SagaStepHandler[HeldContext, Response]):
    async def act(self, context: HeldContext) -> SagaStepResult[HeldContext, Response]:
        log.append(("act", "Held"))
        for during in DURING_HELD:
            await during()
        return self._generate_step_result(Response())


class HeldSaga(Saga[HeldContext]):
    steps = [Held]


# -- the hooks ------------------------------------------------------------------------------------


def _error(error: BaseException | None) -> str | None:
    return None if error is None else type(error).__name__


class Recorder(SagaHook):
    """Overrides every hook point and logs each call (``tag`` tells several recorders apart)."""

    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self.runs: list[tuple[str, RunInfo]] = []

    def _log(self, run: RunInfo, *entry: typing.Any) -> None:
        self.runs.append((entry[0], run))
        log.append((*entry, self.tag) if self.tag else entry)

    def saga_starting(self, run: RunInfo) -> dict[str, str] | None:
        self._log(run, "saga_starting")
        return None

    def saga_started(self, run: RunInfo) -> None:
        self._log(run, "saga_started")

    def saga_resumed(self, run: RunInfo) -> None:
        self._log(run, "saga_resumed")

    def step_started(self, run: RunInfo, step: str) -> None:
        self._log(run, "step_started", step)

    def attempt_started(self, run: RunInfo, step: str, action: str, attempt: int) -> None:
        self._log(run, "attempt_started", step, action, attempt)

    def attempt_finished(
        self, run: RunInfo, step: str, action: str, attempt: int, error: BaseException | None
    ) -> None:
        self._log(run, "attempt_finished", step, action, attempt, _error(error))

    def step_completed(
        self,
        run: RunInfo,
        step: str,
        result: SagaStepResult[typing.Any, typing.Any],
        events: typing.Sequence[object],
    ) -> None:
        assert result.step_type.name == step
        self._log(run, "step_completed", step, [type(e).__name__ for e in events])

    def step_failed(self, run: RunInfo, step: str, error: BaseException) -> None:
        self._log(run, "step_failed", step, _error(error))

    def compensation_started(self, run: RunInfo, error: str | None) -> None:
        self._log(run, "compensation_started", error)

    def step_compensated(self, run: RunInfo, step: str, events: typing.Sequence[object]) -> None:
        self._log(run, "step_compensated", step, [type(e).__name__ for e in events])

    def compensation_failed(self, run: RunInfo, step: str, error: BaseException) -> None:
        self._log(run, "compensation_failed", step, _error(error))

    def saga_finished(self, run: RunInfo, status: SagaStatus, error: str | None) -> None:
        self._log(run, "saga_finished", status.value, error)

    def lease_lost(self, run: RunInfo) -> None:
        self._log(run, "lease_lost")


def forward(step: str, *events: str) -> list[tuple[typing.Any, ...]]:
    """The log of a step that runs forward and completes at its first attempt."""
    return [
        ("step_started", step),
        ("attempt_started", step, "act", 1),
        ("act", step),
        ("attempt_finished", step, "act", 1, None),
        ("step_completed", step, list(events)),
    ]


def undone(step: str) -> list[tuple[typing.Any, ...]]:
    """The log of a step compensated at the first attempt."""
    return [
        ("attempt_started", step, "compensate", 1),
        ("compensate", step),
        ("attempt_finished", step, "compensate", 1, None),
        ("step_compensated", step, []),
    ]


STARTED = [("saga_starting",), ("saga_started",)]


def _awaited(name: str) -> typing.Callable[..., typing.Awaitable[None]]:
    record = getattr(Recorder, name)

    def method(self: Recorder, *args: typing.Any) -> typing.Awaitable[None]:
        async def later() -> None:
            await asyncio.sleep(0)  # a turn of the loop: the run must wait for this before it goes on
            record(self, *args)

        return later()

    return method


class AwaitingRecorder(Recorder):
    """The `Recorder`, but each hook point returns an awaitable that logs only once awaited
    (``saga_starting`` aside: it is synchronous, as it returns the trace fields)."""


for _name in HOOK_METHODS:
    if _name != "saga_starting":
        setattr(AwaitingRecorder, _name, _awaited(_name))


@pytest.fixture(params=[Recorder, AwaitingRecorder], ids=["returns-none", "returns-awaitable"])
def recorder(request: pytest.FixtureRequest) -> Recorder:
    """A recorder whose methods log at once, then one whose methods return awaitables: the log must not differ
    (so what a hook returns is awaited where it was called)."""
    return typing.cast(Recorder, request.param())


# -- every hook point, in order -------------------------------------------------------------------


async def test_a_completed_saga_calls_each_forward_hook_in_order(
    storage: EngineStorage, recorder: Recorder
) -> None:
    harness = make_harness((TripContext, TripSaga), storage=storage, hooks=[recorder], telemetry=False)

    await harness.run_all(TripContext(), correlation_id="trip-1")

    assert log == [
        *STARTED,
        *forward("Reserve", "Reserved"),
        *forward("Book"),
        *forward("Pay"),
        ("saga_finished", "completed", None),
    ]
    saga_ids = {run.saga_id for _, run in recorder.runs}
    assert len(saga_ids) == 1
    assert {(run.saga_name, run.correlation_id, run.recovering) for _, run in recorder.runs} == {
        ("TripSaga", "trip-1", False)
    }
    assert isinstance(recorder.runs[0][1].context, TripContext)


async def test_a_failure_calls_step_failed_then_the_compensation_hooks_newest_first(
    storage: EngineStorage, recorder: Recorder
) -> None:
    harness = make_harness((TripContext, TripSaga), storage=storage, hooks=[recorder], telemetry=False)

    with pytest.raises(Declined):
        await harness.run_all(TripContext(pay_fails=True))

    assert log == [
        *STARTED,
        *forward("Reserve", "Reserved"),
        *forward("Book"),
        ("step_started", "Pay"),
        ("attempt_started", "Pay", "act", 1),
        ("act", "Pay"),
        ("attempt_finished", "Pay", "act", 1, "Declined"),
        ("step_failed", "Pay", "Declined"),
        ("compensation_started", "Declined: card declined"),
        # Both compensations run, then commit together; their hooks follow the commit, in the same order.
        *undone("Book")[:3],
        *undone("Reserve")[:3],
        undone("Book")[3],
        undone("Reserve")[3],
        ("saga_finished", "failed", "Declined: card declined"),
    ]


async def test_with_one_commit_per_compensation_each_hook_follows_its_own_commit(
    storage: EngineStorage, recorder: Recorder
) -> None:
    harness = make_harness(
        (TripContext, TripSaga), storage=storage, hooks=[recorder], telemetry=False, compensation_commits="each"
    )

    with pytest.raises(Declined):
        await harness.run_all(TripContext(pay_fails=True))

    assert log[-10:] == [
        ("compensation_started", "Declined: card declined"),
        *undone("Book"),
        *undone("Reserve"),
        ("saga_finished", "failed", "Declined: card declined"),
    ]


async def test_a_failing_first_step_finishes_the_saga_without_compensation_hooks(
    storage: EngineStorage, recorder: Recorder
) -> None:
    class PayFirst(Saga[TripContext]):
        steps = [Pay]

    harness = make_harness((TripContext, PayFirst), storage=storage, hooks=[recorder], telemetry=False)

    with pytest.raises(Declined):
        await harness.run_all(TripContext(pay_fails=True))

    assert log == [
        *STARTED,
        ("step_started", "Pay"),
        ("attempt_started", "Pay", "act", 1),
        ("act", "Pay"),
        ("attempt_finished", "Pay", "act", 1, "Declined"),
        ("step_failed", "Pay", "Declined"),
        ("saga_finished", "failed", "Declined: card declined"),
    ]


async def test_retried_attempts_are_numbered_for_acts_and_compensations(
    storage: EngineStorage, recorder: Recorder
) -> None:
    harness = make_harness(
        (TripContext, TripSaga),
        storage=storage,
        hooks=[recorder],
        compensation_commits="each",  # each compensation's hooks right after its own commit
        compensation_retry_count=2,
        compensation_retry_delay=0.5,
        telemetry=False,
    )

    with pytest.raises(Declined):
        await harness.run_all(TripContext(book_failures=2, pay_fails=True, unreserve_failures=1))

    book = log.index(("step_started", "Book"))
    assert log[book : book + 8] == [
        ("step_started", "Book"),
        ("attempt_started", "Book", "act", 1),
        ("act", "Book"),
        ("attempt_finished", "Book", "act", 1, "ConnectionError"),
        ("attempt_started", "Book", "act", 2),
        ("act", "Book"),
        ("attempt_finished", "Book", "act", 2, "ConnectionError"),
        ("attempt_started", "Book", "act", 3),
    ]
    unreserve = log.index(("attempt_started", "Reserve", "compensate", 1))
    assert log[unreserve:] == [
        ("attempt_started", "Reserve", "compensate", 1),
        ("compensate", "Reserve"),
        ("attempt_finished", "Reserve", "compensate", 1, "ConnectionError"),
        ("attempt_started", "Reserve", "compensate", 2),
        ("compensate", "Reserve"),
        ("attempt_finished", "Reserve", "compensate", 2, None),
        ("step_compensated", "Reserve", []),
        ("saga_finished", "failed", "Declined: card declined"),
    ]
    assert harness.sleep.delays == pytest.approx([0.1, 0.2, 0.5])


async def test_a_compensation_that_keeps_failing_calls_compensation_failed(
    storage: EngineStorage, recorder: Recorder
) -> None:
    harness = make_harness(
        (TripContext, TripSaga),
        storage=storage,
        hooks=[recorder],
        compensation_commits="each",  # each compensation's hooks right after its own commit
        compensation_retry_count=1,
        telemetry=False,
    )

    with pytest.raises(Declined):
        await harness.run_all(TripContext(pay_fails=True, unreserve_failures=-1))

    compensation = log.index(("compensation_started", "Declined: card declined"))
    assert log[compensation:] == [
        ("compensation_started", "Declined: card declined"),
        *undone("Book"),
        ("attempt_started", "Reserve", "compensate", 1),
        ("compensate", "Reserve"),
        ("attempt_finished", "Reserve", "compensate", 1, "ConnectionError"),
        ("compensation_failed", "Reserve", "ConnectionError"),
        ("saga_finished", "compensation_failed", "Declined: card declined"),
    ]


async def test_a_fallback_reports_the_primarys_failure_then_starts_the_fallback(
    storage: EngineStorage, recorder: Recorder
) -> None:
    harness = make_harness((CardContext, ChargeSaga), storage=storage, hooks=[recorder], telemetry=False)

    await harness.run_all(CardContext())

    assert log == [
        *STARTED,
        ("step_started", "ChargeCard"),
        ("attempt_started", "ChargeCard", "act", 1),
        ("act", "ChargeCard"),
        ("attempt_finished", "ChargeCard", "act", 1, "Declined"),
        ("step_failed", "ChargeCard", "Declined"),
        *forward("ChargeInvoice"),
        ("saga_finished", "completed", None),
    ]


async def test_a_saga_taken_up_from_storage_is_resumed_not_started(
    storage: EngineStorage, recorder: Recorder
) -> None:
    harness = make_harness((TripContext, TripSaga), storage=storage, hooks=[recorder], telemetry=False)
    saga_id = uuid.uuid4()
    async for _ in harness.mediator.stream(TripContext(), saga_id=saga_id, correlation_id="trip-2"):
        break  # paused after Reserve
    log.clear()
    recorder.runs.clear()

    outcome = await harness.mediator.resume(saga_id)

    assert outcome.status == SagaStatus.COMPLETED
    assert log == [("saga_resumed",), *forward("Book"), *forward("Pay"), ("saga_finished", "completed", None)]
    (resumed,) = {run for _, run in recorder.runs}
    assert (resumed.saga_id, resumed.recovering, resumed.correlation_id) == (saga_id, True, "trip-2")
    assert resumed.created_at is not None


async def test_a_recovered_saga_whose_next_step_fails_calls_the_failure_and_compensation_hooks(
    storage: EngineStorage, recorder: Recorder
) -> None:
    harness = make_harness((TripContext, TripSaga), storage=storage, lease_seconds=LEASE, telemetry=False)
    saga_id = uuid.uuid4()
    async for result in harness.mediator.stream(TripContext(pay_fails=True), saga_id=saga_id):
        if result.step_type is Book:
            break  # interrupted after two steps; Pay fails when recovery runs it
    await advance(storage, LEASE + 1)
    log.clear()
    recovery = make_harness(
        (TripContext, TripSaga),
        storage=storage,
        lease_seconds=LEASE,
        hooks=[recorder],
        telemetry=False,
        compensation_commits="each",  # each compensation's hooks right after its own commit
    )

    assert await recovery.mediator.recovery_worker().run_once() == 1

    assert log == [
        ("saga_resumed",),
        ("step_started", "Pay"),
        ("attempt_started", "Pay", "act", 1),
        ("act", "Pay"),
        ("attempt_finished", "Pay", "act", 1, "Declined"),
        ("step_failed", "Pay", "Declined"),
        ("compensation_started", "Declined: card declined"),
        *undone("Book"),
        *undone("Reserve"),
        ("saga_finished", "failed", "Declined: card declined"),
    ]
    log.clear()

    # Taken up again now that it is final: nothing runs, so no hook is called.
    with pytest.raises(SagaCompensatedError):
        await recovery.mediator.recover(TripSaga, saga_id)
    assert log == []


async def test_a_lost_lease_calls_lease_lost_and_nothing_after(
    storage: EngineStorage, recorder: Recorder
) -> None:
    harness = make_harness(
        (HeldContext, HeldSaga),
        storage=storage,
        lease_seconds=LEASE,
        hooks=[recorder],
        telemetry=False,
    )
    saga_id = uuid.uuid4()

    async def taken_over() -> None:
        # While the step runs, its lease lapses and another runner claims the saga.
        await advance(storage, LEASE + 1)
        claim = await storage.claim_saga(saga_id, "another-runner", LEASE)
        assert claim is not None and claim.lease is not None

    DURING_HELD.append(taken_over)

    with pytest.raises(SagaOwnershipLostError):
        await harness.mediator.run(HeldContext(), saga_id)

    assert log == [
        *STARTED,
        ("step_started", "Held"),
        ("attempt_started", "Held", "act", 1),
        ("act", "Held"),
        ("attempt_finished", "Held", "act", 1, None),
        ("lease_lost",),
    ]
    record = await storage.get_saga(saga_id)
    assert record is not None
    assert (record.owner, record.status) == ("another-runner", SagaStatus.RUNNING)
    assert await harness.history(saga_id) == []


# -- what hooks return, raise and see -------------------------------------------------------------


class Tracer(SagaHook):
    """Supplies trace fields at the start and notes what every run of the saga says they are."""

    def __init__(self, fields: dict[str, str] | None) -> None:
        self.fields = fields
        self.starting = 0
        self.seen: list[tuple[str, dict[str, str] | None]] = []

    def saga_starting(self, run: RunInfo) -> dict[str, str] | None:
        self.starting += 1
        return self.fields

    def saga_started(self, run: RunInfo) -> None:
        self.seen.append(("started", run.trace_context))

    def saga_resumed(self, run: RunInfo) -> None:
        self.seen.append(("resumed", run.trace_context))


async def test_trace_fields_from_saga_starting_are_stored_and_read_back_by_later_runs(storage: EngineStorage) -> None:
    parent = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    tenant = {"baggage": "tenant=t1"}
    traceparent, quiet, baggage = Tracer(parent), Tracer(None), Tracer(tenant)
    harness = make_harness(
        (TripContext, TripSaga),
        storage=storage,
        hooks=[traceparent,
        quiet,
        baggage],
        telemetry=False,
    )
    saga_id = uuid.uuid4()
    merged = {**parent, **tenant}

    async for _ in harness.mediator.stream(TripContext(), saga_id=saga_id):
        break
    record = await storage.get_saga(saga_id)
    assert record is not None
    assert record.trace_context == merged
    assert traceparent.seen == [("started", merged)]

    # A later run, by a mediator without the hooks that supplied them, reads them from storage.
    observer = Tracer({"ignored": "not a new saga"})
    later = make_harness((TripContext, TripSaga), storage=storage, hooks=[observer], telemetry=False)
    assert (await later.mediator.resume(saga_id)).status == SagaStatus.COMPLETED

    assert observer.seen == [("resumed", merged)]
    assert observer.starting == 0
    assert [t.starting for t in (traceparent, quiet, baggage)] == [1, 1, 1]


async def test_a_saga_no_hook_gives_trace_fields_stores_none(storage: EngineStorage) -> None:
    harness = make_harness((TripContext, TripSaga), storage=storage, hooks=[Tracer(None)], telemetry=False)

    (result, *_) = await harness.run_all(TripContext())

    record = await storage.get_saga(result.saga_id)  # type: ignore[arg-type]
    assert record is not None
    assert record.trace_context is None


async def test_coroutines_from_plain_and_async_hook_methods_are_awaited_in_place(storage: EngineStorage) -> None:
    class Awaiting(SagaHook):
        """Returns coroutines from plain methods and from async ones."""

        def step_completed(
            self, run: RunInfo, step: str, result: typing.Any, events: typing.Sequence[object]
        ) -> typing.Awaitable[None]:
            return self._later("step_completed", step)

        async def step_compensated(self, run: RunInfo, step: str, events: typing.Sequence[object]) -> None:
            await self._later("step_compensated", step)

        async def saga_finished(self, run: RunInfo, status: SagaStatus, error: str | None) -> None:
            await self._later("saga_finished", status.value)

        async def _later(self, *entry: str) -> None:
            await asyncio.sleep(0)  # one turn of the loop: the engine must wait for this
            log.append(entry)

    harness = make_harness(
        (TripContext, TripSaga), storage=storage, hooks=[Awaiting()], telemetry=False, compensation_commits="each"
    )

    with pytest.raises(Declined):
        await harness.run_all(TripContext(pay_fails=True))

    assert log == [
        ("act", "Reserve"),
        ("step_completed", "Reserve"),
        ("act", "Book"),
        ("step_completed", "Book"),
        ("act", "Pay"),
        ("compensate", "Book"),
        ("step_compensated", "Book"),
        ("compensate", "Reserve"),
        ("step_compensated", "Reserve"),
        ("saga_finished", "failed"),
    ]


async def test_hooks_run_in_the_order_installed_after_the_event_dispatcher(storage: EngineStorage) -> None:
    class ReservedHandler:
        async def handle(self, event: Reserved) -> None:
            log.append(("handled", type(event).__name__))

    harness = make_harness(
        (TripContext, TripSaga),
        storage=storage,
        hooks=[Recorder("first"), Recorder("second")],
        domain_events_mapper=lambda events: events.bind(Reserved, ReservedHandler),
        telemetry=False,
    )

    await harness.run_all(TripContext())

    assert len(harness.mediator.hooks) == 3
    assert type(harness.mediator.hooks[0]).__name__ == "EventDispatchHook"
    reserved = log.index(("act", "Reserve"))
    assert log[reserved + 1 : reserved + 6] == [
        ("attempt_finished", "Reserve", "act", 1, None, "first"),
        ("attempt_finished", "Reserve", "act", 1, None, "second"),
        ("handled", "Reserved"),
        ("step_completed", "Reserve", ["Reserved"], "first"),
        ("step_completed", "Reserve", ["Reserved"], "second"),
    ]


async def test_what_a_hook_raises_reaches_the_caller_and_the_committed_step_stays(storage: EngineStorage) -> None:
    class Exploding(SagaHook):
        def step_completed(
            self, run: RunInfo, step: str, result: typing.Any, events: typing.Sequence[object]
        ) -> None:
            raise RuntimeError(f"hook failed after {step}")

    harness = make_harness((TripContext, TripSaga), storage=storage, hooks=[Exploding()], telemetry=False)
    saga_id = uuid.uuid4()

    with pytest.raises(RuntimeError, match="hook failed after Reserve"):
        await harness.run_all(TripContext(), saga_id=saga_id)

    assert log == [("act", "Reserve")]
    assert await harness.history(saga_id) == [("Reserve", "act", "completed")]
    assert await harness.status(saga_id) == SagaStatus.RUNNING  # not compensated: recovery takes it up


SPAN: contextvars.ContextVar[str | None] = contextvars.ContextVar("SPAN", default=None)


async def test_attempt_hooks_run_in_the_steps_context(storage: EngineStorage) -> None:
    """What `attempt_started` sets in a context variable, the step's code sees until `attempt_finished`;
    the saga's correlation id is set around both."""

    class Spans(SagaHook):
        def __init__(self) -> None:
            self.tokens: list[contextvars.Token[str | None]] = []

        def attempt_started(self, run: RunInfo, step: str, action: str, attempt: int) -> None:
            log.append(("attempt_started", step, correlation.get_correlation_id(), correlation.get_saga_id()))
            self.tokens.append(SPAN.set(f"{step}/{action}#{attempt}"))

        def attempt_finished(
            self, run: RunInfo, step: str, action: str, attempt: int, error: BaseException | None
        ) -> None:
            log.append(("attempt_finished", step, SPAN.get()))
            SPAN.reset(self.tokens.pop())

    class Spanned(SagaStepHandler[TripContext, Response]):
        async def act(self, context: TripContext) -> SagaStepResult[TripContext, Response]:
            log.append(("act", SPAN.get(), correlation.get_correlation_id()))
            return self._generate_step_result(Response())

    class SpannedSaga(Saga[TripContext]):
        steps = [Spanned]

    harness = make_harness((TripContext, SpannedSaga), storage=storage, hooks=[Spans()], telemetry=False)
    saga_id = uuid.uuid4()

    await harness.run_all(TripContext(), saga_id=saga_id, correlation_id="req-7")

    assert log == [
        ("attempt_started", "Spanned", "req-7", saga_id),
        ("act", "Spanned/act#1", "req-7"),
        ("attempt_finished", "Spanned", "Spanned/act#1"),
    ]
    assert SPAN.get() is None



# -- hooks that override nothing, and duck-typed hooks ----------------------------------------


class Silent(SagaHook):
    """Subclasses the base and overrides nothing."""


async def test_a_hook_that_overrides_nothing_is_never_called(
    storage: EngineStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    called: list[str] = []
    for name in HOOK_METHODS:
        # Were the engine to call a base method, it would show here.
        monkeypatch.setattr(SagaHook, name, lambda self, *args, _name=name: called.append(_name))
    harness = make_harness((TripContext, TripSaga), storage=storage, hooks=[Silent(), SagaHook()], telemetry=False)

    run = harness.mediator.build_run(TripSaga, uuid.uuid4())
    assert run.hooks.hooks == harness.mediator.hooks
    assert len(run.hooks.hooks) == 2
    assert all(getattr(run.hooks, name) == () for name in HOOK_METHODS)
    with pytest.raises(Declined):
        await harness.run_all(TripContext(pay_fails=True))

    assert called == []
    assert log == [
        ("act", "Reserve"), ("act", "Book"), ("act", "Pay"), ("compensate", "Book"), ("compensate", "Reserve")
    ]


def test_only_the_methods_a_hook_overrides_are_in_the_hook_set() -> None:
    class OnlyCompleted(SagaHook):
        def step_completed(
            self, run: RunInfo, step: str, result: typing.Any, events: typing.Sequence[object]
        ) -> None:
            return None

    hook = OnlyCompleted()
    hooks = HookSet([Silent(), hook])

    assert {name: len(getattr(hooks, name)) for name in HOOK_METHODS if getattr(hooks, name)} == {"step_completed": 1}
    assert hooks.step_completed[0].__self__ is hook  # type: ignore[attr-defined]
    assert hooks.plus() is hooks
    duck = DuckHook()
    assert hooks.plus(duck).hooks == (*hooks.hooks, duck)
    assert not HookSet()


async def test_a_mediator_without_hooks_builds_runs_with_an_empty_hook_set(storage: EngineStorage) -> None:
    harness = make_harness((TripContext, TripSaga), storage=storage, telemetry=False)

    run = harness.mediator.build_run(TripSaga, uuid.uuid4())

    assert harness.mediator.hooks == ()
    assert not run.hooks
    assert all(getattr(run.hooks, name) == () for name in HOOK_METHODS)


class DuckHook:
    """Not a `SagaHook`: whatever hook methods it has are called; other attributes are left alone."""

    saga_started = None  # not callable: not a hook method

    def step_completed(self, run: RunInfo, step: str, result: typing.Any, events: typing.Sequence[object]) -> None:
        log.append(("duck:step_completed", step))

    async def saga_finished(self, run: RunInfo, status: SagaStatus, error: str | None) -> None:
        log.append(("duck:saga_finished", status.value))

    def unrelated(self) -> None:
        raise AssertionError("not a hook point")


async def test_a_duck_typed_hook_is_called_for_the_methods_it_has(storage: EngineStorage) -> None:
    harness = make_harness((TripContext, TripSaga), storage=storage, hooks=[DuckHook()], telemetry=False)

    run = harness.mediator.build_run(TripSaga, uuid.uuid4())
    assert {name for name in HOOK_METHODS if getattr(run.hooks, name)} == {"step_completed", "saga_finished"}
    await harness.run_all(TripContext())

    assert log == [
        ("act", "Reserve"),
        ("duck:step_completed", "Reserve"),
        ("act", "Book"),
        ("duck:step_completed", "Book"),
        ("act", "Pay"),
        ("duck:step_completed", "Pay"),
        ("duck:saga_finished", "completed"),
    ]


# -- listeners --------------------------------------------------------------------------------------


async def test_a_listener_gets_a_saga_event_per_transition(storage: EngineStorage) -> None:
    harness = make_harness((TripContext, TripSaga), storage=storage, telemetry=False)
    events: list[SagaEvent] = []
    saga_id = uuid.uuid4()

    with pytest.raises(Declined):
        await harness.run_all(TripContext(pay_fails=True), saga_id=saga_id, listener=events.append)

    assert [(e.kind, e.step_name, e.error) for e in events] == [
        ("started", None, None),
        ("step_completed", "Reserve", None),
        ("step_completed", "Book", None),
        ("step_failed", "Pay", "Declined: card declined"),
        ("compensating", None, "Declined: card declined"),
        ("step_compensated", "Book", None),
        ("step_compensated", "Reserve", None),
        ("failed", None, "Declined: card declined"),
    ]
    assert {e.saga_id for e in events} == {saga_id}
    assert events[-1].status == SagaStatus.FAILED
    assert isinstance(events[1].response, Response)
    assert isinstance(ListenerHook(events.append), SagaHook)
