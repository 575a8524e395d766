"""Run hooks: observe every saga run, whichever path started it.

A hook is an object with any of the methods of `SagaHook` (subclass it and
override what you need). Install hooks on the mediator
(``SagaMediator(..., hooks=[...])`` or ``bootstrap(..., hooks=[...])``); every
run it builds calls them: streams, background runs, recovery, triggers and
the integrations alike. Domain-event dispatch, SSE listeners, logging,
tracing and metrics are hooks.

Each method gets the run (a `RunInfo`) first. A method may return an
awaitable; the engine awaits it before going on. Methods run in the run's
task, inside the saga's correlation scope where a step is running, so context
variables a hook sets in `attempt_started` are visible to the step's code
until `attempt_finished`.

What a hook raises propagates into the run (a failing ``step_completed``
after the checkpoint committed does not undo the step, but the caller sees
the error); catch inside the hook what must not stop a saga. Hooks that
override nothing cost nothing: the engine calls only overridden methods.
"""

from __future__ import annotations

import dataclasses
import datetime
import typing
import uuid

from cqrs.response import Response
from cqrs.saga.storage.enums import SagaStatus

if typing.TYPE_CHECKING:
    from cqrs.saga.saga import Saga
    from cqrs.saga.step import SagaStepResult
    from cqrs.saga.storage.models import SagaRecord

__all__ = ["Listener", "ListenerHook", "RunInfo", "SagaEvent", "SagaHook"]

Action = typing.Literal["act", "compensate"]
MaybeAwaitable = typing.Awaitable[None] | None


class RunInfo(typing.Protocol):
    """What a hook may read of a run."""

    @property
    def saga_id(self) -> uuid.UUID: ...

    @property
    def saga_type(self) -> type[Saga[typing.Any]]: ...

    @property
    def saga_name(self) -> str: ...

    @property
    def correlation_id(self) -> str | None: ...

    @property
    def status(self) -> SagaStatus: ...

    @property
    def error(self) -> str | None: ...

    @property
    def context(self) -> typing.Any: ...

    @property
    def created_at(self) -> datetime.datetime | None: ...

    @property
    def recovering(self) -> bool:
        """Whether this run took the saga up from storage (recovery, resume) rather than starting it."""
        ...

    @property
    def trace_context(self) -> dict[str, str] | None:
        """Trace propagation fields stored with the saga when it started (None if none were)."""
        ...


class SagaHook:
    """Base class of run hooks: every method does nothing; override the ones you need.

    A hook may also define ``active() -> bool``: it is asked as each run is
    built, and a run built while it says False does without the hook (a
    logging hook with its level off, say), at no cost per step.
    """

    def saga_starting(self, run: RunInfo) -> dict[str, str] | None:
        """A new saga is about to be recorded; return trace propagation fields to store with it.

        Synchronous. What the hooks return is merged and stored with the saga
        (`RunInfo.trace_context` in every later run of it, recovery included).
        """

    def saga_started(self, run: RunInfo) -> MaybeAwaitable:
        """A new saga was recorded (its start committed)."""

    def saga_resumed(self, run: RunInfo) -> MaybeAwaitable:
        """A stored saga was claimed to be advanced (recovery, a background run, a resumed stream)."""

    def step_started(self, run: RunInfo, step: str) -> MaybeAwaitable:
        """A step (or its fallback) is about to run forward."""

    def attempt_started(self, run: RunInfo, step: str, action: Action, attempt: int) -> MaybeAwaitable:
        """One attempt of a step's ``act`` or ``compensate`` starts (``attempt`` counts from 1)."""

    def attempt_finished(
        self, run: RunInfo, step: str, action: Action, attempt: int, error: BaseException | None
    ) -> MaybeAwaitable:
        """That attempt ended: ``error`` is what it raised, None if it succeeded."""

    def step_completed(
        self,
        run: RunInfo,
        step: str,
        result: SagaStepResult[typing.Any, typing.Any],
        events: typing.Sequence[object],
    ) -> MaybeAwaitable:
        """A step's completion committed; ``events`` are the domain events its instance produced."""

    def step_failed(self, run: RunInfo, step: str, error: BaseException) -> MaybeAwaitable:
        """A step's ``act`` failed after its retries.

        For the primary of a `Fallback` whose fallback takes over, the
        fallback's `step_started` follows; otherwise compensation follows.
        """

    def compensation_started(self, run: RunInfo, error: str | None) -> MaybeAwaitable:
        """The record that compensation began committed; no step runs forward from here."""

    def step_compensated(self, run: RunInfo, step: str, events: typing.Sequence[object]) -> MaybeAwaitable:
        """A step's compensation committed; ``events`` are the domain events it produced meanwhile."""

    def compensation_failed(self, run: RunInfo, step: str, error: BaseException) -> MaybeAwaitable:
        """A step's compensation failed after its retries (recorded; recovery retries it)."""

    def saga_finished(self, run: RunInfo, status: SagaStatus, error: str | None) -> MaybeAwaitable:
        """The saga reached a final status in this run (completed, failed or compensation_failed)."""

    def lease_lost(self, run: RunInfo) -> MaybeAwaitable:
        """Another runner took the saga over; this run stops without writing."""

    def recovery_claimed(self, record: SagaRecord) -> MaybeAwaitable:
        """A recovery worker claimed this stored saga (its run, if it is run, follows as ``saga_resumed``)."""

    def saga_parked(self, record: SagaRecord, reason: str) -> MaybeAwaitable:
        """A recovery worker parked this saga for an operator (too many attempts); it will not run."""


@dataclasses.dataclass(frozen=True)
class SagaEvent:
    """A progress notification from a run, for listeners (SSE streams, audit logs).

    ``kind`` is one of ``started``, ``resumed``, ``step_completed``,
    ``step_failed``, ``compensating``, ``step_compensated``,
    ``compensation_failed``, ``completed``, ``failed``.
    """

    kind: str
    saga_id: uuid.UUID
    step_name: str | None = None
    response: Response | None = None
    error: str | None = None
    replayed: bool = False
    status: SagaStatus | None = None


Listener = typing.Callable[[SagaEvent], None]


def error_text(error: BaseException) -> str:
    """How an error is stored and reported: ``"TypeName: message"``."""
    return f"{type(error).__name__}: {error}"


class ListenerHook(SagaHook):
    """Turns hook calls into `SagaEvent`s for a listener (a plain callable)."""

    __slots__ = ("listener",)

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def _emit(
        self,
        kind: str,
        run: RunInfo,
        step: str | None = None,
        *,
        response: Response | None = None,
        error: str | None = None,
    ) -> None:
        self.listener(SagaEvent(kind, run.saga_id, step, response, error, status=run.status))

    def saga_started(self, run: RunInfo) -> None:
        self._emit("started", run)

    def saga_resumed(self, run: RunInfo) -> None:
        self._emit("resumed", run)

    def step_completed(
        self,
        run: RunInfo,
        step: str,
        result: SagaStepResult[typing.Any, typing.Any],
        events: typing.Sequence[object],
    ) -> None:
        self._emit("step_completed", run, step, response=result.response)

    def step_failed(self, run: RunInfo, step: str, error: BaseException) -> None:
        self._emit("step_failed", run, step, error=error_text(error))

    def compensation_started(self, run: RunInfo, error: str | None) -> None:
        self._emit("compensating", run, error=error)

    def step_compensated(self, run: RunInfo, step: str, events: typing.Sequence[object]) -> None:
        self._emit("step_compensated", run, step)

    def compensation_failed(self, run: RunInfo, step: str, error: BaseException) -> None:
        self._emit("compensation_failed", run, step, error=error_text(error))

    def saga_finished(self, run: RunInfo, status: SagaStatus, error: str | None) -> None:
        self._emit("completed" if status == SagaStatus.COMPLETED else "failed", run, error=error)
