"""Operator actions on stored sagas: park, reset, recover, re-run from the failed step, and the repairs of a
saga whose compensation failed (retry, resolve by hand, skip one compensation).

(Over 500 lines on purpose: each action is a check of the saga's state and one conditional write, and
they share those checks; split apart, the rules of when an action is allowed would be spread over modules.)

`SagaOperations` works over a storage (and a `SagaMediator` for the actions
that run saga code); the ``cqrs-saga`` CLI and the saga console both call it,
and so can your own tools. Every action:

- refuses, with `OperationRefusedError` saying why and what would do, when
  the saga's status or history does not allow it (`SagaNotFoundError` for an
  unknown id);
- never races a live runner: its write is conditional on the saga having no
  live lease and on the version it checked (``amend_saga(unleased=True,
  expected_version=...)``); `SagaLeasedError` when a runner holds the saga;
- is recorded in the saga's history. What an operator declares about a step
  (compensated by hand, compensation skipped) is an entry of that step, with
  the note in its details; other notes are entries of the pseudo-step
  ``@operator`` (action ``act``, status ``started``), which the engine, the
  diagrams and the views pass over.

The engine's rules decide what is allowed: a completed step never runs again,
and once a saga started compensating it never runs forward. So:

- `rerun` (``cqrs-saga recover ID --from-step NAME``) runs a saga forward
  again from ``NAME``, which must be its first step without a recorded
  completion, and only when nothing of it was compensated and no
  compensation started: a ``failed`` saga whose class sets
  ``rerun_failed = True`` (a ``failed`` saga with nothing compensated is one
  whose first step failed), or a ``parked`` saga that was parked while running
  forward. A saga whose earlier steps were compensated cannot go forward
  from its failed step: their effects were undone.
- `retry_compensations`, `resolve` and `skip_compensation` apply to a saga
  that is compensating (``compensation_failed``, ``compensating`` without a
  live lease, or ``parked`` after its compensation started).
"""

from __future__ import annotations

import dataclasses
import datetime
import typing
import uuid

from cqrs.saga.exceptions import SagaAlreadyRunningError, SagaError, SagaNotFoundError
from cqrs.saga.fallback import Fallback
from cqrs.saga.storage.enums import RESUMABLE, SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import SagaLogEntry, SagaRecord, StepEntry
from cqrs.saga.storage.protocol import SagaStorage

if typing.TYPE_CHECKING:
    from cqrs.saga.mediator import SagaMediator, SagaOutcome
    from cqrs.saga.saga import Saga

__all__ = [
    "ACTIONS",
    "OPERATOR_STEP",
    "ActionResult",
    "OperationRefusedError",
    "SagaLeasedError",
    "SagaOperations",
]

#: The pseudo-step of operator notes in a saga's history.
OPERATOR_STEP = "@operator"
#: The actions `SagaOperations.allowed` judges, by name (the console's buttons, the CLI's commands).
ACTIONS = ("park", "reset", "recover", "rerun", "retry", "resolve", "skip")

_UTC = datetime.timezone.utc
_COMPENSATING = frozenset({SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED})


class _LeaseReason(str):
    """A refusal because a runner holds the lease (raised as `SagaLeasedError`)."""

    __slots__ = ()


class OperationRefusedError(SagaError, RuntimeError):
    """An operator action that the saga's status or history does not allow; the message says why."""

    def __init__(self, saga_id: uuid.UUID, action: str, reason: str) -> None:
        self.saga_id = saga_id
        self.action = action
        self.reason = reason
        super().__init__(f"Cannot {action} saga {saga_id}: {reason}")


class SagaLeasedError(OperationRefusedError):
    """A runner holds the saga's lease: acting now would race it (wait for it, or for the lease to expire)."""


@dataclasses.dataclass(frozen=True)
class ActionResult:
    """What an action did: the saga's status afterwards, a sentence for the operator, and the run's outcome
    when the action ran the saga here."""

    saga_id: uuid.UUID
    action: str
    status: SagaStatus
    message: str
    outcome: SagaOutcome | None = None


@dataclasses.dataclass(frozen=True)
class _Saga:
    """A saga as an action reads it: record, history, and what the history says."""

    record: SagaRecord
    history: list[SagaLogEntry]

    @property
    def steps(self) -> list[SagaLogEntry]:
        """The history without operator notes."""
        return [e for e in self.history if e.step_name != OPERATOR_STEP]

    @property
    def completed(self) -> list[str]:
        """Steps with a recorded completion, in order."""
        seen: list[str] = []
        for e in self.steps:
            if e.action == "act" and e.status == SagaStepStatus.COMPLETED and e.step_name not in seen:
                seen.append(e.step_name)
        return seen

    @property
    def compensated(self) -> set[str]:
        return {e.step_name for e in self.steps if e.action == "compensate" and e.status == SagaStepStatus.COMPENSATED}

    @property
    def outstanding(self) -> list[str]:
        """Completed steps not compensated yet, newest first (the order compensation takes)."""
        done = self.compensated
        return [name for name in reversed(self.completed) if name not in done]

    @property
    def compensation_started(self) -> bool:
        """Whether the saga ever began compensating (a compensation entry, or a step failed after others completed)."""
        if any(e.action == "compensate" for e in self.steps):
            return True
        completed_before_failure = False
        for e in self.steps:
            if e.action == "act" and e.status == SagaStepStatus.COMPLETED:
                completed_before_failure = True
            elif e.action == "act" and e.status == SagaStepStatus.FAILED and completed_before_failure:
                return True
        return False

    @property
    def failed_forward(self) -> bool:
        """Whether a step's action failed (as opposed to the run stopping)."""
        return any(e.action == "act" and e.status == SagaStepStatus.FAILED for e in self.steps)

    def leased(self, now: datetime.datetime) -> bool:
        expires = self.record.lease_expires_at
        return self.record.owner is not None and expires is not None and expires > now


class SagaOperations:
    """Operator actions over a storage (and a mediator, for the actions that run saga code).

    ``SagaOperations(storage)`` can park, reset, resolve and skip;
    ``SagaOperations(mediator=mediator)`` (its storage is used) can also run
    sagas here: `recover`, and `rerun` and `retry_compensations` with
    ``run=True``. ``actor`` names who acts, in the notes written to history.
    """

    def __init__(
        self,
        storage: SagaStorage | None = None,
        *,
        mediator: SagaMediator | None = None,
        actor: str = "operator",
    ) -> None:
        if storage is None:
            if mediator is None:
                raise TypeError("SagaOperations needs a storage or a mediator")
            storage = mediator.storage
        self.storage = storage
        self.mediator = mediator
        self.actor = actor

    # -- reading ---------------------------------------------------------------------------------

    async def load(self, saga_id: uuid.UUID) -> tuple[SagaRecord, list[SagaLogEntry]]:
        """The saga's record and history; `SagaNotFoundError` if it is not stored."""
        record = await self.storage.get_saga(saga_id)
        history = await self.storage.get_history(saga_id) if record is not None else None
        if record is None or history is None:
            raise SagaNotFoundError(saga_id)
        return record, history

    def allowed(self, record: SagaRecord, history: list[SagaLogEntry]) -> dict[str, str | None]:
        """Each action of `ACTIONS` with the reason it would be refused now (None: allowed).

        ``rerun`` and ``skip`` are judged for the step they would take (the
        first step without a completion; the newest outstanding compensation).
        """
        saga = _Saga(record, history)
        now = datetime.datetime.now(_UTC)
        outstanding = saga.outstanding
        return {
            "park": self._why_not_park(saga, now),
            "reset": self._why_not_reset(saga, now),
            "recover": self._why_not_recover(saga, now),
            "rerun": self._why_not_rerun(saga, now, None),
            "retry": self._why_not_repair(saga, now, run=True),
            "resolve": self._why_not_repair(saga, now, run=False),
            "skip": self._why_not_repair(saga, now, run=False)
            or (None if outstanding else "no compensation is outstanding"),
        }

    @staticmethod
    def outstanding(history: list[SagaLogEntry]) -> list[str]:
        """The completed steps whose compensation has not been recorded, newest first."""
        return _Saga(_NO_RECORD, history).outstanding

    def next_step(self, record: SagaRecord, history: list[SagaLogEntry]) -> str | None:
        """The step a forward run of the saga would start with (None if every step completed or unknown saga)."""
        saga_type = self._saga_type(record.name)
        if saga_type is None:
            return None
        completed = set(_Saga(record, history).completed)
        for entry in saga_type.steps:
            names = [t.name for t in entry.step_types] if isinstance(entry, Fallback) else [entry.name]
            if not completed.intersection(names):
                return names[0]
        return None

    # -- actions ---------------------------------------------------------------------------------

    async def park(self, saga_id: uuid.UUID, note: str = "") -> ActionResult:
        """Take an unfinished saga out of recovery (status ``parked``) until someone resets it."""
        saga = await self._read(saga_id)
        self._refuse(saga, "park", self._why_not_park(saga, _now()))
        reason = f"parked by {self.actor}" + (f": {note}" if note else "")
        if saga.record.error:
            reason += f"; the saga's own error: {saga.record.error}"
        await self._amend(saga, "park", status=SagaStatus.PARKED, error=reason, entry=self._note("park", note))
        return ActionResult(saga_id, "park", SagaStatus.PARKED, f"Saga {saga_id} is parked.")

    async def reset(self, saga_id: uuid.UUID, note: str = "") -> ActionResult:
        """Make a parked or stuck saga recoverable again, with fresh recovery attempts.

        It becomes ``compensating`` if its compensation had started, else
        ``running``; a recovery worker (or `recover`) takes it from there.
        """
        saga = await self._read(saga_id)
        self._refuse(saga, "reset", self._why_not_reset(saga, _now()))
        status = SagaStatus.COMPENSATING if saga.compensation_started else SagaStatus.RUNNING
        await self._amend(saga, "reset", status=status, recovery_attempts=0, entry=self._note("reset", note))
        return ActionResult(
            saga_id, "reset", status, f"Saga {saga_id} is {status.value} again; a recovery worker will take it up."
        )

    async def recover(self, saga_id: uuid.UUID) -> ActionResult:
        """Advance a resumable saga here and now, as far as it goes (needs the mediator)."""
        saga = await self._read(saga_id)
        self._refuse(saga, "recover", self._why_not_recover(saga, _now()))
        outcome = await self._run(saga_id, "recover")
        return ActionResult(
            saga_id, "recover", outcome.status, f"Saga {saga_id} ran and is {outcome.status.value}.", outcome
        )

    async def rerun(self, saga_id: uuid.UUID, step: str, note: str = "", *, run: bool = True) -> ActionResult:
        """Run a ``failed`` (or ``parked``) saga forward again from ``step``, after a fix.

        Allowed only as the module docstring says; ``step`` must be the
        first step without a recorded completion. The saga becomes
        ``running`` with fresh attempts; with ``run`` (and a mediator) it runs
        here, else a recovery worker takes it up.
        """
        saga = await self._read(saga_id)
        self._refuse(saga, "rerun", self._why_not_rerun(saga, _now(), step))
        await self._amend(
            saga, "rerun", status=SagaStatus.RUNNING, error="", recovery_attempts=0,
            entry=self._note("rerun", note, f"from step {step}"),
        )
        return await self._then_run(saga_id, "rerun", SagaStatus.RUNNING, run)

    async def retry_compensations(self, saga_id: uuid.UUID, note: str = "", *, run: bool = True) -> ActionResult:
        """Try the outstanding compensations of a saga whose compensation failed again, with fresh attempts.

        With ``run`` (and a mediator) they run here; otherwise the recovery
        workers retry them.
        """
        saga = await self._read(saga_id)
        self._refuse(saga, "retry", self._why_not_repair(saga, _now(), run=True))
        status = SagaStatus.COMPENSATION_FAILED if saga.record.status == SagaStatus.PARKED else None
        await self._amend(saga, "retry", status=status, recovery_attempts=0, entry=self._note("retry", note))
        return await self._then_run(saga_id, "retry", status or saga.record.status, run)

    async def resolve(self, saga_id: uuid.UUID, note: str) -> ActionResult:
        """Mark every outstanding compensation as done by hand and the saga ``failed`` (compensated).

        Each outstanding step gets a ``compensated`` entry whose details say
        who resolved it and ``note``. While the entries are written the saga
        is ``parked`` (no worker takes it up); an interrupted resolve is
        finished by running it again.
        """
        if not note.strip():
            raise OperationRefusedError(saga_id, "resolve", "say what was done by hand (a note is required)")
        saga = await self._read(saga_id)
        self._refuse(saga, "resolve", self._why_not_repair(saga, _now(), run=False))
        details = f"compensated by hand, resolved by {self.actor}: {note}"
        entries = [StepEntry(name, "compensate", SagaStepStatus.COMPENSATED, details) for name in saga.outstanding]
        if not entries:
            entries = [self._note("resolve", note)]
        error = saga.record.error
        steps = ", ".join(saga.outstanding) or "none outstanding"
        if len(entries) > 1:
            await self._amend(
                saga, "resolve", status=SagaStatus.PARKED, entry=entries[0],
                error=f"being resolved by hand by {self.actor} (if this stays, run resolve again)",
            )
            saga = await self._read(saga_id)
            for entry in entries[1:-1]:
                await self._amend(saga, "resolve", entry=entry)
        await self._amend(saga, "resolve", status=SagaStatus.FAILED, error=error or "", entry=entries[-1])
        return ActionResult(
            saga_id, "resolve", SagaStatus.FAILED, f"Saga {saga_id} is resolved by hand ({steps}) and failed."
        )

    async def skip_compensation(self, saga_id: uuid.UUID, step: str, note: str) -> ActionResult:
        """Record ``step``'s compensation as skipped (it counts as compensated; its ``compensate`` never runs).

        When it was the last one outstanding the saga becomes ``failed``;
        otherwise its status stays, and a retry or recovery compensates the rest.
        """
        if not note.strip():
            raise OperationRefusedError(saga_id, "skip", "say why the compensation is skipped (a note is required)")
        saga = await self._read(saga_id)
        self._refuse(saga, "skip", self._why_not_repair(saga, _now(), run=False))
        outstanding = saga.outstanding
        if step not in outstanding:
            why = (
                "it was compensated already" if step in saga.compensated
                else "it never completed, so there is nothing to compensate"
            )
            listed = ", ".join(outstanding) or "none"
            raise OperationRefusedError(saga_id, "skip", f"step {step!r} has no compensation outstanding: {why} "
                                        f"(outstanding: {listed})")
        others = [name for name in outstanding if name != step]
        status = None if others else SagaStatus.FAILED
        entry = StepEntry(step, "compensate", SagaStepStatus.COMPENSATED, f"skipped by {self.actor}: {note}")
        await self._amend(saga, "skip", status=status, entry=entry)
        now_status = status or saga.record.status
        rest = f"still outstanding: {', '.join(others)}" if others else "it was the last one outstanding"
        message = f"Compensation of {step} skipped ({rest}); saga {saga_id} is {now_status.value}."
        return ActionResult(saga_id, "skip", now_status, message)

    async def purge(
        self,
        older_than: datetime.timedelta,
        *,
        status: SagaStatus | None = None,
        batch: int = 500,
        progress: typing.Callable[[int], None] | None = None,
    ) -> int:
        """Delete finished sagas created more than ``older_than`` ago, ``batch`` per transaction; returns
        how many. ``progress`` is called with each batch's count."""
        total = 0
        while True:
            deleted = await self.storage.purge_sagas(older_than=older_than, status=status, limit=batch)
            total += deleted
            if progress is not None and deleted:
                progress(deleted)
            if deleted < batch:
                return total

    async def count_purgeable(self, older_than: datetime.timedelta, *, status: SagaStatus | None = None) -> int:
        """How many sagas `purge` would delete now (finished, created before ``older_than``, no owner)."""
        from cqrs.saga.storage.enums import purge_filter

        statuses = purge_filter(older_than, status)
        count, after = 0, None
        while True:
            page = await self.storage.list_sagas(status=statuses, older_than=older_than, after=after, limit=1000)
            count += sum(1 for record in page if record.owner is None)
            if len(page) < 1000:
                return count
            after = page[-1]

    # -- the rules -----------------------------------------------------------------------------------

    def _why_not_park(self, saga: _Saga, now: datetime.datetime) -> str | None:
        status = saga.record.status
        if status.is_final:
            return f"it is {status.value} already"
        return self._why_leased(saga, now)

    def _why_not_reset(self, saga: _Saga, now: datetime.datetime) -> str | None:
        status = saga.record.status
        if status in (SagaStatus.COMPLETED, SagaStatus.FAILED):
            hint = " (to run a failed saga again from its failed step, use rerun / --from-step)" * (
                status == SagaStatus.FAILED
            )
            return f"it is {status.value}: there is nothing to resume{hint}"
        return self._why_leased(saga, now)

    def _why_not_recover(self, saga: _Saga, now: datetime.datetime) -> str | None:
        status = saga.record.status
        if status not in RESUMABLE:
            hint = {
                SagaStatus.PARKED: "reset it first, or rerun it from a step",
                SagaStatus.FAILED: "it was compensated; rerun it from its failed step if its definition allows",
                SagaStatus.COMPLETED: "it has nothing left to do",
            }[status]
            return f"it is {status.value} ({hint})"
        return self._why_leased(saga, now) or self._why_no_definition(saga)

    def _why_not_rerun(self, saga: _Saga, now: datetime.datetime, step: str | None) -> str | None:
        status = saga.record.status
        if status not in (SagaStatus.FAILED, SagaStatus.PARKED):
            return (
                f"it is {status.value}; only a failed or parked saga is re-run from a step"
                + (" (recover runs a resumable one)" if status in RESUMABLE else "")
            )
        missing = self._why_no_definition(saga)
        if missing:
            return missing
        if saga.compensation_started or saga.compensated:
            return (
                "its compensation started, and once compensating a saga never runs forward again "
                "(its earlier steps' effects were undone)"
            )
        saga_type = self._saga_type(saga.record.name)
        assert saga_type is not None
        if status == SagaStatus.FAILED and not saga_type.rerun_failed:
            return (
                f"{saga_type.__qualname__} does not allow it: set `rerun_failed = True` on the class "
                "if its failed runs may be run again from the failed step"
            )
        if status == SagaStatus.PARKED and saga.failed_forward:
            return "a step failed before it was parked; reset it to finish compensating"
        first = self.next_step(saga.record, saga.history)
        if first is None:
            return "every step completed already"
        if step is not None and step != first and not _same_entry(saga_type, step, first):
            known = {t.name for t in saga_type.step_types()}
            if step not in known:
                return f"{saga_type.__qualname__} has no step {step!r}"
            if step in saga.completed:
                return f"step {step!r} completed already, and a completed step never runs again (from {first!r})"
            return f"it would run from {first!r}, its first step without a completion, not from {step!r}"
        return self._why_leased(saga, now)

    def _why_not_repair(self, saga: _Saga, now: datetime.datetime, *, run: bool) -> str | None:
        status = saga.record.status
        repairable = status in _COMPENSATING or (status == SagaStatus.PARKED and saga.compensation_started)
        if not repairable:
            return f"it is {status.value}, and this applies to a saga whose compensation failed or stopped"
        if run and self.mediator is not None:
            missing = self._why_no_definition(saga)
            if missing:
                return missing
        return self._why_leased(saga, now)

    def _why_leased(self, saga: _Saga, now: datetime.datetime) -> str | None:
        if saga.leased(now):
            expires = saga.record.lease_expires_at
            assert expires is not None
            return _LeaseReason(
                f"a runner ({saga.record.owner}) holds its lease until {expires.isoformat(timespec='seconds')}; "
                "try again once it lets go"
            )
        return None

    def _why_no_definition(self, saga: _Saga) -> str | None:
        if self.mediator is None:
            return "running it needs the saga definitions (a mediator; the CLI's --app module:object)"
        saga_type = self._saga_type(saga.record.name)
        if saga_type is None:
            return f"no saga named {saga.record.name!r} is among the definitions given"
        if saga_type.version != saga.record.definition_version:
            return (
                f"it was started by version {saga.record.definition_version} of {saga.record.name}, "
                f"and the definitions given are version {saga_type.version}"
            )
        return None

    # -- helpers ---------------------------------------------------------------------------------------

    def _saga_type(self, name: str) -> type[Saga[typing.Any]] | None:
        return None if self.mediator is None else self.mediator.saga_map.by_name(name)

    async def _read(self, saga_id: uuid.UUID) -> _Saga:
        record, history = await self.load(saga_id)
        return _Saga(record, history)

    def _refuse(self, saga: _Saga, action: str, reason: str | None) -> None:
        if reason is None:
            return
        if isinstance(reason, _LeaseReason):
            raise SagaLeasedError(saga.record.saga_id, action, reason)
        raise OperationRefusedError(saga.record.saga_id, action, reason)

    def _note(self, action: str, note: str, what: str = "") -> StepEntry:
        text = f"{action}{' ' + what if what else ''} by {self.actor}" + (f": {note}" if note else "")
        return StepEntry(OPERATOR_STEP, "act", SagaStepStatus.STARTED, text)

    async def _amend(
        self,
        saga: _Saga,
        action: str,
        *,
        status: SagaStatus | None = None,
        error: str | None = None,
        entry: StepEntry | None = None,
        recovery_attempts: int | None = None,
    ) -> None:
        """One guarded write: only if the saga is still at the version read and no runner holds it."""
        saga_id = saga.record.saga_id
        written = await self.storage.amend_saga(
            saga_id, status=status, error=error, entry=entry, recovery_attempts=recovery_attempts,
            expected_version=saga.record.version, unleased=True,
        )
        if written:
            return
        now = await self.storage.get_saga(saga_id)
        if now is None:
            raise SagaNotFoundError(saga_id)
        leased = self._why_leased(_Saga(now, []), _now())
        if leased:
            raise SagaLeasedError(saga_id, action, leased)
        raise OperationRefusedError(
            saga_id, action, f"it changed while this action was checked (now {now.status.value}); look again"
        )

    async def _then_run(self, saga_id: uuid.UUID, action: str, status: SagaStatus, run: bool) -> ActionResult:
        if not run or self.mediator is None:
            return ActionResult(
                saga_id, action, status, f"Saga {saga_id} is {status.value}; a recovery worker will take it up."
            )
        try:
            outcome = await self._run(saga_id, action)
        except SagaLeasedError:
            return ActionResult(
                saga_id, action, status, f"Saga {saga_id} is {status.value}; a recovery worker took it up first."
            )
        return ActionResult(
            saga_id, action, outcome.status, f"Saga {saga_id} ran and is {outcome.status.value}.", outcome
        )

    async def _run(self, saga_id: uuid.UUID, action: str) -> SagaOutcome:
        assert self.mediator is not None
        try:
            return await self.mediator.resume(saga_id)
        except SagaAlreadyRunningError as error:
            raise SagaLeasedError(saga_id, action, f"a runner holds it ({error})") from error


_NO_RECORD = SagaRecord(uuid.UUID(int=0), "", SagaStatus.PENDING, {}, 0)


def _now() -> datetime.datetime:
    return datetime.datetime.now(_UTC)


def _same_entry(saga_type: type[Saga[typing.Any]], step: str, first: str) -> bool:
    """Whether ``step`` is the fallback of the entry ``first`` leads (naming either runs that entry)."""
    index = saga_type.entry_index()
    return step in index and index.get(step) == index.get(first)
