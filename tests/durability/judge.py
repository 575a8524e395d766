"""The judge: compares what the steps did (the ledger) with what the storage recorded.

A `Snapshot` is taken twice: right after the crash (before any recovery) and
once recovery is over. `promise_problems` checks the durability promises for
one saga between the two and returns what it found wrong, as readable lines,
so a failing test shows every broken promise at once.
"""

from __future__ import annotations

import collections
import dataclasses
import typing
import uuid

from cqrs.saga.storage.enums import SagaStatus

from .saga import STEP_NAMES, LedgerLine

__all__ = ["Snapshot", "count_runs", "promise_problems", "take_snapshot"]

Row = tuple[str, str, str]  # (step, action, status) of a saga_log row


@dataclasses.dataclass(frozen=True)
class Snapshot:
    statuses: dict[str, SagaStatus]
    histories: dict[str, list[Row]]
    ledger: list[LedgerLine]

    def lines(self, saga_id: str) -> list[LedgerLine]:
        return [line for line in self.ledger if line.saga_id == saga_id]


async def take_snapshot(
    storage: typing.Any, saga_ids: typing.Iterable[uuid.UUID | str], ledger: list[LedgerLine]
) -> Snapshot:
    statuses: dict[str, SagaStatus] = {}
    histories: dict[str, list[Row]] = {}
    for saga_id in saga_ids:
        key = str(saga_id)
        record = await storage.get_saga(uuid.UUID(key))
        assert record is not None, f"saga {key} is not stored"
        statuses[key] = SagaStatus(record.status)
        histories[key] = [
            (entry.step_name, entry.action, str(entry.status))
            for entry in await storage.get_step_history(uuid.UUID(key))
        ]
    return Snapshot(statuses, histories, list(ledger))


def count_runs(lines: typing.Iterable[LedgerLine]) -> collections.Counter[tuple[str, str]]:
    """How often each (action, step) ran."""
    return collections.Counter((line.action, line.step) for line in lines)


def _completed(rows: list[Row]) -> list[str]:
    return [step for step, action, status in rows if action == "act" and status == "completed"]


def _compensated(rows: list[Row]) -> list[str]:
    return [step for step, action, status in rows if action == "compensate" and status == "compensated"]


def promise_problems(saga_id: str, before: Snapshot, after: Snapshot) -> list[str]:
    """Every durability promise one saga broke between a crash (``before``) and the end of recovery."""
    problems: list[str] = []

    def bad(message: str) -> None:
        problems.append(f"saga {saga_id}: {message}")

    if after.ledger[: len(before.ledger)] != before.ledger:
        bad("the ledger was rewritten, not appended to")
    old = before.lines(saga_id)
    new = after.ledger[len(before.ledger):]
    new = [line for line in new if line.saga_id == saga_id]
    rows0, rows1 = before.histories[saga_id], after.histories[saga_id]
    status0, status1 = before.statuses[saga_id], after.statuses[saga_id]

    # Storage history is append-only: recovery adds rows, never changes recorded ones.
    if rows1[: len(rows0)] != rows0:
        bad(f"recovery changed recorded history {rows0} -> {rows1}")

    # Promise 4: every saga ends completed or compensated.
    if status1 not in (SagaStatus.COMPLETED, SagaStatus.FAILED):
        bad(f"ended {status1}, not completed or failed")

    # Promise 1: a step whose completion was recorded never runs again.
    recorded0 = set(_completed(rows0))
    for line in new:
        if line.action == "act" and line.step in recorded0:
            bad(f"step {line.step} ran again although its completion was recorded")

    # Promise 2 and "only the step in flight may appear twice".
    acts = count_runs(line for line in old + new if line.action == "act")
    old_acts = count_runs(line for line in old if line.action == "act")
    twice = [step for (_, step), n in acts.items() if n == 2]
    for (_, step), n in acts.items():
        if n > 2:
            bad(f"act of {step} ran {n} times")
    if len(twice) > 1:
        bad(f"more than one step ran twice: {twice}")
    for step in twice:
        if old_acts[("act", step)] != 1:
            bad(f"step {step} ran twice but not once before the crash and once after")
    in_flight = [step for (_, step) in old_acts if step not in recorded0]
    if len(in_flight) > 1:
        bad(f"more than one step was in flight at the crash: {in_flight}")
    if status0 == SagaStatus.RUNNING:
        for step in in_flight:
            if acts[("act", step)] != 2:
                bad(f"step {step} was in flight at the crash but did not run again")
    completed1 = _completed(rows1)
    for step, n in collections.Counter(completed1).items():
        if n > 1:
            bad(f"completion of {step} recorded {n} times")
    for step in set(completed1) - recorded0:
        if acts[("act", step)] == 0:
            bad(f"completion of {step} recorded during recovery but its act never ran")

    compensations = count_runs(line for line in old + new if line.action == "compensate")
    if status1 == SagaStatus.COMPLETED:
        if completed1 != list(STEP_NAMES):
            bad(f"completed, but the recorded steps are {completed1}")
        if compensations:
            bad(f"completed, but compensations ran: {dict(compensations)}")
    elif status1 == SagaStatus.FAILED:
        # Every completed step compensated exactly once; only compensations that ran
        # before the crash without being recorded may appear twice (the engine records
        # a failed saga's compensations together in one commit, so that may be several).
        compensated0 = set(_compensated(rows0))
        in_flight_comp = {
            line.step for line in old if line.action == "compensate" and line.step not in compensated0
        }
        for step in completed1:
            allowed = (1, 2) if step in in_flight_comp else (1,)
            if compensations[("compensate", step)] not in allowed:
                bad(f"compensation of {step} ran {compensations[('compensate', step)]} times")
        for (_, step) in compensations:
            if step not in completed1:
                bad(f"compensated {step}, which never completed")
        if sorted(_compensated(rows1)) != sorted(completed1):
            bad(f"recorded compensations {_compensated(rows1)} do not match completed steps {completed1}")

    # Promise 5: once compensation began, nothing runs forward again.
    began = False
    for line in old + new:
        began = began or line.action == "compensate"
        if began and line.action == "act":
            bad(f"act of {line.step} ran after compensation had begun")
    if status0 in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED):
        for line in new:
            if line.action == "act":
                bad(f"saga was compensating, but recovery ran act of {line.step}")
    began = False
    for step, action, status in rows1:
        began = began or action == "compensate" or (action == "act" and status == "failed")
        if began and action == "act" and status == "completed":
            bad(f"completion of {step} recorded after the saga began compensating")
    return problems
