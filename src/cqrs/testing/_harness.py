"""`SagaHarness`: a mediator for a test, with faults to inject, recovery to run and outcomes to assert."""

from __future__ import annotations

import typing
import uuid

from cqrs.saga.exceptions import SagaOwnershipLostError
from cqrs.saga.hooks import RunInfo
from cqrs.saga.map import SagaMap
from cqrs.saga.mediator import SagaMediator, SagaOutcome
from cqrs.saga.recovery import RecoveryWorker
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.settings import DEFAULT_COMPENSATION_RETRY, EngineSettings
from cqrs.saga.storage.enums import RESUMABLE, SagaStatus
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.saga.storage.models import Lease
from cqrs.testing._clock import FakeClock, FakeSleep
from cqrs.testing._faults import Fault, FaultHook, SimulatedCrash, StepRef, step_name
from cqrs.testing._recorder import RecorderHook, SagaRecording

if typing.TYPE_CHECKING:
    from cqrs.saga.storage.protocol import SagaStorage
    from cqrs.triggers import AcceptedEvent

__all__ = ["SagaHarness"]

SagaType = type[Saga[typing.Any]]
_UNSET: typing.Any = object()


class SagaHarness:
    """A mediator over ``sagas`` for one test, with a fake clock and sleep, faults and assertions.

    ``storage`` defaults to a `MemorySagaStorage` on ``clock``, so leases
    lapse when the test moves the clock (`recover` does). ``container``
    builds the steps (default: a ``di.Container``). Retries and compensation
    retries wait through ``sleep``, which returns at once and moves the clock.
    ``hooks`` are installed after the harness's own recorder and fault hooks.

    Faults (`fail_step`, `crash_before`, `crash_before_commit`,
    `crash_after_commit`, `lose_lease`) are armed before `run`; the run
    stops where they say, and `recover` finishes what a crash left.
    """

    def __init__(
        self,
        *sagas: SagaType,
        container: typing.Any = None,
        storage: SagaStorage | None = None,
        clock: FakeClock | None = None,
        sleep: FakeSleep | None = None,
        lease_seconds: float = 30.0,
        compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
        hooks: typing.Iterable[object] = (),
        telemetry: bool = True,
    ) -> None:
        if container is None:
            import di

            container = di.Container()
        self.clock = clock or FakeClock()
        self.sleep = sleep or FakeSleep(self.clock)
        self.storage: SagaStorage = storage if storage is not None else MemorySagaStorage(clock=self.clock)
        self.lease_seconds = lease_seconds
        self.sagas = sagas
        saga_map = SagaMap()
        for saga_type in sagas:
            saga_map.register(saga_type)
        self.recorder = RecorderHook()
        self.faults = FaultHook(self.storage, lease_seconds)
        self.faults.on_fire = self._fired
        self.mediator = SagaMediator(
            saga_map,
            container,
            storage=self.storage,
            settings=EngineSettings(
                compensation_retry=compensation_retry, lease_seconds=lease_seconds, sleep=self.sleep
            ),
            hooks=[self.recorder, self.faults, *hooks],
            telemetry=telemetry,
        )
        self._tables_created = False

    # -- faults ------------------------------------------------------------------------

    def _arm(self, fault: Fault) -> SagaHarness:
        self.faults.faults.append(fault)
        return self

    def _fired(self, run: RunInfo, fault: Fault) -> None:
        recording = self.recorder.of(run)
        recording.faults.append(fault.describe(step_name(run, fault.step)))
        recording.timeline.append(f"fault: {recording.faults[-1]}")

    def fail_step(
        self,
        step: StepRef,
        error: Exception | None = None,
        *,
        times: int | None = 1,
        compensation: bool = False,
        saga_id: uuid.UUID | None = None,
    ) -> SagaHarness:
        """Make ``step``'s act (or its compensate) raise ``error`` instead of running, ``times`` times.

        ``times=None``: every attempt fails. ``saga_id``: only in that saga.
        """
        action: typing.Literal["act", "compensate"] = "compensate" if compensation else "act"
        return self._arm(Fault("fail", step, action, times, error, saga_id))

    def crash_before(self, step: StepRef, *, saga_id: uuid.UUID | None = None) -> SagaHarness:
        """The process dies as ``step`` is about to run (nothing of it happened)."""
        return self._arm(Fault("crash_before_act", step, saga_id=saga_id))

    def crash_before_commit(self, step: StepRef, *, saga_id: uuid.UUID | None = None) -> SagaHarness:
        """The process dies after ``step``'s act ran, before its completion was recorded: recovery runs it again."""
        return self._arm(Fault("crash_before_commit", step, saga_id=saga_id))

    def crash_after_commit(self, step: StepRef, *, saga_id: uuid.UUID | None = None) -> SagaHarness:
        """The process dies just after ``step``'s completion was recorded: recovery goes on from the next step."""
        return self._arm(Fault("crash_after_commit", step, saga_id=saga_id))

    def lose_lease(self, step: StepRef, *, saga_id: uuid.UUID | None = None) -> SagaHarness:
        """Another runner takes the saga over while ``step`` runs: the run stops without recording the step."""
        return self._arm(Fault("lose_lease", step, saga_id=saga_id))

    def clear_faults(self) -> None:
        """Disarm every fault."""
        self.faults.faults.clear()

    # -- running ---------------------------------------------------------------------------

    async def _ready(self) -> None:
        """Create the storage's tables on first use (SQL storages)."""
        if not self._tables_created:
            self._tables_created = True
            create = getattr(self.storage, "create_tables", None)
            if create is not None:
                await create()

    async def run(
        self, context: typing.Any, saga_id: uuid.UUID | None = None, *, correlation_id: str | None = None
    ) -> SagaOutcome:
        """Run the saga bound to ``type(context)`` as far as it goes.

        An injected crash or lost lease does not raise: the outcome's
        ``status`` is what the storage then holds (``running`` after a crash)
        and ``error`` the injected fault.
        """
        await self._ready()
        saga_id = saga_id or uuid.uuid4()
        try:
            return await self.mediator.run(context, saga_id, correlation_id=correlation_id)
        except (SimulatedCrash, SagaOwnershipLostError) as stopped:
            return SagaOutcome(saga_id, await self.status(saga_id), [], stopped)

    async def resume(self, saga_id: uuid.UUID) -> SagaOutcome:
        """Advance a stored saga (a recorded, pending one, say), as a background run does."""
        await self._ready()
        try:
            return await self.mediator.resume(saga_id)
        except (SimulatedCrash, SagaOwnershipLostError) as stopped:
            return SagaOutcome(saga_id, await self.status(saga_id), [], stopped)

    async def expire_leases(self) -> None:
        """Let every held lease lapse, as if its runner had died long ago.

        On the memory storage the clock moves past the lease; on another
        storage each held lease is released.
        """
        if isinstance(self.storage, MemorySagaStorage) and getattr(self.storage, "_clock", None) is self.clock:
            self.clock.advance(self.lease_seconds + 1)
            return
        for record in await self.storage.list_sagas(status=list(RESUMABLE), limit=10_000):
            if record.owner is not None:
                await self.storage.release_lease(record.saga_id, Lease(record.owner, record.lease_epoch))

    async def recover(self, *, max_attempts: int = 10, max_passes: int = 20) -> int:
        """Let held leases lapse, then run recovery passes until one claims nothing; returns how many were claimed.

        Crashes injected during recovery count as a dead recovery worker: the
        next pass takes the saga up again.
        """
        await self._ready()
        worker = RecoveryWorker(self.mediator, max_attempts=max_attempts)
        claimed = 0
        for _ in range(max_passes):
            await self.expire_leases()
            try:
                count = await worker.run_once()
            except SimulatedCrash:
                count = 1
            if count == 0:
                return claimed
            claimed += count
        raise AssertionError(f"recovery still claiming sagas after {max_passes} passes")

    async def deliver(
        self, source: str, event: typing.Mapping[str, typing.Any], *, times: int = 2, run: bool = True
    ) -> list[AcceptedEvent]:
        """Deliver ``event`` from ``source`` ``times`` times (`TriggerRouter.accept`), running the sagas it starts.

        Returns each delivery's answer: with an idempotency key, the first
        starts the sagas and the others find them (``status == "duplicate"``).
        """
        from cqrs.triggers import TriggerRouter

        await self._ready()
        router = TriggerRouter(self.sagas)
        answers: list[AcceptedEvent] = []
        for _ in range(times):
            accepted = await router.accept(self.mediator, source, event)
            answers.append(accepted)
            if run:
                for saga in accepted.started:
                    await self.resume(saga.saga_id)
        return answers

    # -- what happened -------------------------------------------------------------------------

    def recording(self, saga_id: uuid.UUID) -> SagaRecording:
        """What the hooks saw of ``saga_id`` over all its runs (empty if nothing ran)."""
        return self.recorder.sagas.get(saga_id) or SagaRecording(saga_id, "?")

    async def status(self, saga_id: uuid.UUID) -> SagaStatus:
        """The saga's stored status."""
        record = await self.storage.get_saga(saga_id)
        if record is None:
            raise AssertionError(f"Saga {saga_id} is not stored")
        return record.status

    async def assert_saga(
        self,
        saga_id: uuid.UUID,
        *,
        status: SagaStatus | str = _UNSET,
        steps: typing.Sequence[str] = _UNSET,
        compensated: typing.Sequence[str] = _UNSET,
        events: typing.Sequence[object] = _UNSET,
    ) -> None:
        """Check how ``saga_id`` went; every expectation that does not hold is named in one `AssertionError`.

        ``status``: the stored final status. ``steps``: the steps whose act ran
        to its end, in order (one run again after a crash appears twice).
        ``compensated``: the steps whose compensate ran to its end, in order.
        ``events``: the domain events the steps emitted, in order; an expected
        item that is a class matches any event of that class.
        """
        __tracebackhide__ = True
        from cqrs.testing._assertions import check_saga

        record = await self.storage.get_saga(saga_id)
        problems = check_saga(
            self.recording(saga_id),
            record.status if record is not None else None,
            status=status,
            steps=steps,
            compensated=compensated,
            events=events,
            unset=_UNSET,
        )
        if problems:
            name = record.name if record is not None else self.recording(saga_id).saga_name
            error = f" (error: {record.error})" if record is not None and record.error else ""
            raise AssertionError(
                f"Saga {saga_id} ({name}) did not go as expected{error}:\n"
                + "\n".join(f"  {problem}" for problem in problems)
                + "\n  what ran:\n"
                + self.recording(saga_id).story()
            )

    async def aclose(self) -> None:
        """Close the storage if it has a ``close`` (SQL storages do)."""
        close = getattr(self.storage, "close", None)
        if close is not None:
            await close()

    async def __aenter__(self) -> SagaHarness:
        await self._ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
