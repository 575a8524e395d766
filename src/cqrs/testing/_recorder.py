"""What a harness saw of each saga, across all its runs: a run hook that records."""

from __future__ import annotations

import dataclasses
import typing
import uuid

from cqrs.saga.hooks import Action, RunInfo, SagaHook
from cqrs.saga.storage.enums import SagaStatus

if typing.TYPE_CHECKING:
    from cqrs.saga.step import SagaStepResult

__all__ = ["Attempt", "SagaRecording"]


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One attempt of a step's act or compensate: ``error`` is what it raised (None if it succeeded)."""

    step: str
    action: Action
    attempt: int
    error: str | None = None

    def __str__(self) -> str:
        return f"{self.action} {self.step} (attempt {self.attempt}): {self.error or 'ok'}"


@dataclasses.dataclass
class SagaRecording:
    """Everything the hooks reported of one saga, over every run of it (recovery included)."""

    saga_id: uuid.UUID
    saga_name: str
    runs: int = 0
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    completed: list[str] = dataclasses.field(default_factory=list)
    compensated: list[str] = dataclasses.field(default_factory=list)
    events: list[object] = dataclasses.field(default_factory=list)
    faults: list[str] = dataclasses.field(default_factory=list)
    timeline: list[str] = dataclasses.field(default_factory=list)
    lease_losses: int = 0
    finished: SagaStatus | None = None
    error: str | None = None

    @property
    def steps_run(self) -> list[str]:
        """Steps whose act ran to its end, in order; a step run again after a crash shows twice."""
        return [a.step for a in self.attempts if a.action == "act" and a.error is None]

    @property
    def compensations_run(self) -> list[str]:
        """Steps whose compensate ran to its end, in order."""
        return [a.step for a in self.attempts if a.action == "compensate" and a.error is None]

    def story(self) -> str:
        """What happened, a line per attempt, fault and run taken up, in order: for failure messages."""
        return "\n".join(f"    {line}" for line in self.timeline) or "    (no step ran)"


class RecorderHook(SagaHook):
    """Keeps a `SagaRecording` per saga id."""

    def __init__(self) -> None:
        self.sagas: dict[uuid.UUID, SagaRecording] = {}

    def of(self, run: RunInfo) -> SagaRecording:
        found = self.sagas.get(run.saga_id)
        if found is None:
            found = self.sagas[run.saga_id] = SagaRecording(run.saga_id, run.saga_name)
        return found

    def saga_started(self, run: RunInfo) -> None:
        self.of(run).runs += 1

    def saga_resumed(self, run: RunInfo) -> None:
        recording = self.of(run)
        recording.runs += 1
        recording.timeline.append(f"taken up from storage ({run.status.value})")

    def attempt_finished(
        self, run: RunInfo, step: str, action: Action, attempt: int, error: BaseException | None
    ) -> None:
        text = None if error is None else f"{type(error).__name__}: {error}"
        recording = self.of(run)
        recording.attempts.append(Attempt(step, action, attempt, text))
        recording.timeline.append(str(recording.attempts[-1]))

    def step_completed(
        self,
        run: RunInfo,
        step: str,
        result: SagaStepResult[typing.Any, typing.Any],
        events: typing.Sequence[object],
    ) -> None:
        recording = self.of(run)
        recording.completed.append(step)
        recording.events.extend(events)

    def step_compensated(self, run: RunInfo, step: str, events: typing.Sequence[object]) -> None:
        recording = self.of(run)
        recording.compensated.append(step)
        recording.events.extend(events)

    def saga_finished(self, run: RunInfo, status: SagaStatus, error: str | None) -> None:
        recording = self.of(run)
        recording.finished = status
        recording.error = error

    def lease_lost(self, run: RunInfo) -> None:
        self.of(run).lease_losses += 1
