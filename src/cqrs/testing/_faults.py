"""Faults injected into saga runs through run hooks: failures, crashes, lost leases.

A fault names a step (by name, or by its 1-based position in the saga) and
fires the first ``times`` times the run reaches it (every time when ``times``
is None). Nothing of the saga's own code is changed.
"""

from __future__ import annotations

import dataclasses
import typing
import uuid

from cqrs.saga.fallback import Fallback
from cqrs.saga.hooks import Action, RunInfo, SagaHook
from cqrs.saga.storage.models import Lease

if typing.TYPE_CHECKING:
    from cqrs.saga.step import SagaStepResult
    from cqrs.saga.storage.protocol import SagaStorage

__all__ = ["InjectedFault", "SimulatedCrash", "StepRef"]

StepRef = str | int

#: The lease owner a "lost lease" fault hands the saga to.
THIEF = "cqrs.testing:another-runner"


class InjectedFault(Exception):
    """The error a ``fail_step`` fault raises when the test gave none."""


class SimulatedCrash(BaseException):
    """The process "died" here: raised through the engine, which writes nothing more.

    A `BaseException`, like the process dying, so no ``except Exception`` in
    the engine or the saga's steps handles it; the saga's lease stays held,
    as a dead runner's does, until it lapses.
    """


def step_name(run: RunInfo, step: StepRef) -> str:
    """The name of ``step`` in ``run``'s saga (a 1-based position is looked up in its steps)."""
    if isinstance(step, str):
        return step
    steps = run.saga_type.steps
    if not 1 <= step <= len(steps):
        raise IndexError(f"{run.saga_name} has {len(steps)} steps; there is no step {step}")
    entry = steps[step - 1]
    return entry.step.name if isinstance(entry, Fallback) else entry.name


@dataclasses.dataclass
class Fault:
    """One armed fault: where it fires, how often, and what it does."""

    kind: typing.Literal["fail", "crash_before_act", "crash_before_commit", "crash_after_commit", "lose_lease"]
    step: StepRef
    action: Action = "act"
    times: int | None = 1
    error: BaseException | None = None
    saga_id: uuid.UUID | None = None
    fired: int = 0

    def matches(self, run: RunInfo, step: str, action: Action) -> bool:
        return (
            action == self.action
            and (self.times is None or self.fired < self.times)
            and (self.saga_id is None or self.saga_id == run.saga_id)
            and step == step_name(run, self.step)
        )

    def describe(self, step: str) -> str:
        return f"{self.kind.replace('_', ' ')} at {self.action} {step}"


class FaultHook(SagaHook):
    """Fires the armed faults; ``on_fire`` hears of each (the harness's recording)."""

    def __init__(self, storage: SagaStorage, lease_seconds: float) -> None:
        self.storage = storage
        self.lease_seconds = lease_seconds
        self.faults: list[Fault] = []
        self.on_fire: typing.Callable[[RunInfo, Fault], None] | None = None

    def _fire(self, run: RunInfo, step: str, action: Action, *kinds: str) -> Fault | None:
        for fault in self.faults:
            if fault.kind in kinds and fault.matches(run, step, action):
                fault.fired += 1
                if self.on_fire is not None:
                    self.on_fire(run, fault)
                return fault
        return None

    def attempt_started(
        self, run: RunInfo, step: str, action: Action, attempt: int
    ) -> typing.Awaitable[None] | None:
        fault = self._fire(run, step, action, "fail", "crash_before_act", "lose_lease")
        if fault is None:
            return None
        if fault.kind == "fail":
            raise fault.error or InjectedFault(f"injected failure of {action} {step}")
        if fault.kind == "crash_before_act":
            raise SimulatedCrash(f"crashed before {action} {step} ran")
        return self._steal_lease(run)

    def attempt_finished(
        self, run: RunInfo, step: str, action: Action, attempt: int, error: BaseException | None
    ) -> None:
        if error is None and self._fire(run, step, action, "crash_before_commit"):
            raise SimulatedCrash(f"crashed after {action} {step} ran, before it was recorded")

    def step_completed(
        self,
        run: RunInfo,
        step: str,
        result: SagaStepResult[typing.Any, typing.Any],
        events: typing.Sequence[object],
    ) -> None:
        if self._fire(run, step, "act", "crash_after_commit"):
            raise SimulatedCrash(f"crashed after {step}'s completion was recorded")

    async def _steal_lease(self, run: RunInfo) -> None:
        """Another runner takes the saga over (as if this one's lease had lapsed): the run's next write fails."""
        record = await self.storage.get_saga(run.saga_id)
        if record is None or record.owner is None:
            raise RuntimeError(f"Saga {run.saga_id} holds no lease to lose")
        await self.storage.release_lease(run.saga_id, Lease(record.owner, record.lease_epoch))
        if await self.storage.claim_saga(run.saga_id, THIEF, self.lease_seconds) is None:
            raise RuntimeError(f"Saga {run.saga_id} could not be taken over")
