"""A real runner process is SIGKILLed at an exact point; recovery in this process finishes its sagas
(some with ``recover_saga`` by id, the rest with a ``RecoveryWorker``), on SQLite, PostgreSQL and MariaDB.

The runner announces on stdout that every armed saga is at the kill point and
waits there; the test kills it when it reads that line, so the point is
reached deterministically, without sleeping or racing.

The side-effect ledger (an fsynced file the steps append to) is the judge:
every saga ends completed or compensated, no step whose completion was
recorded runs again, only the step (or compensation) in flight at the kill
runs twice, and a saga that began compensating never runs forward again.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import typing
import uuid
from pathlib import Path

import pytest

from conftest import database_url
from cqrs.saga.exceptions import SagaAlreadyRunningError, SagaCompensatedError
from cqrs.saga.recovery import RecoveryWorker, recover_saga
from cqrs.saga.settings import EngineSettings
from cqrs.saga.storage.enums import SagaStatus
from durability.db import expire_leases, open_storage
from durability.judge import Snapshot, count_runs, promise_problems, take_snapshot
from durability.saga import (
    KILL_MARKER,
    FileLedger,
    LedgerLine,
    OrderContext,
    OrderSaga,
    StepEnv,
    read_file_ledger,
)

RUNNER = Path(__file__).parent / "durability" / "runner.py"
SAGAS = 5
BY_ID = 2  # of the SAGAS, recovered with recover_saga; the rest by a RecoveryWorker

COMPLETED = SagaStatus.COMPLETED
FAILED = SagaStatus.FAILED


class Case(typing.NamedTuple):
    status_at_kill: SagaStatus
    history_at_kill: list[tuple[str, str, str]]
    final_status: SagaStatus
    runs: dict[tuple[str, str], int]


ONCE_EACH = {("act", "reserve"): 1, ("act", "charge"): 1, ("act", "ship"): 1}
RESERVE_DONE = [("reserve", "act", "completed")]
CASES = {
    # Killed before charge wrote anything: nothing is run twice.
    "before_act": Case(SagaStatus.RUNNING, RESERVE_DONE, COMPLETED, ONCE_EACH),
    # Killed after charge's effect, before the engine heard of it: charge runs again, once.
    "in_act": Case(SagaStatus.RUNNING, RESERVE_DONE, COMPLETED, {**ONCE_EACH, ("act", "charge"): 2}),
    # Killed as the engine was about to record charge: same, charge runs again, once.
    "before_commit": Case(SagaStatus.RUNNING, RESERVE_DONE, COMPLETED, {**ONCE_EACH, ("act", "charge"): 2}),
    # ship failed, compensating; killed after charge's compensation took effect, before it was recorded.
    "in_compensation": Case(
        SagaStatus.COMPENSATING,
        [
            ("reserve", "act", "completed"),
            ("charge", "act", "completed"),
            ("ship", "act", "failed"),
        ],
        FAILED,
        {**ONCE_EACH, ("compensate", "charge"): 2, ("compensate", "reserve"): 1},
    ),
}


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-group-commit", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """SQLite, PostgreSQL (also with group commit, in the runner process too), MariaDB."""
    return database_url(request, request.param)


async def run_crashing_runner(url: str, ledger: Path, kill_point: str, log: Path) -> None:
    """Start the runner, wait for its ``at-kill-point`` line, SIGKILL it there."""
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(RUNNER), "crash", "--url", url, "--ledger", str(ledger),
            "--kill-point", kill_point, "--sagas", str(SAGAS),
            stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            assert line.decode().strip() == KILL_MARKER, (line, log.read_text())
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), timeout=60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, log.read_text())


async def recover_everything(worker: RecoveryWorker, max_passes: int = 20) -> int:
    """Run passes until one claims nothing; returns how many sagas were claimed."""
    claimed = 0
    for _ in range(max_passes):
        count = await worker.run_once()
        if count == 0:
            return claimed
        claimed += count
    raise AssertionError(f"recovery still claiming sagas after {max_passes} passes")


@pytest.mark.slow
@pytest.mark.parametrize("kill_point", list(CASES))
async def test_sagas_of_a_killed_runner_are_recovered_exactly(db_url: str, kill_point: str, tmp_path: Path) -> None:
    case = CASES[kill_point]
    ledger = tmp_path / "ledger.txt"
    storage = await open_storage(db_url)
    try:
        await run_crashing_runner(db_url, ledger, kill_point, tmp_path / "runner.log")

        records = await storage.list_sagas(name=OrderSaga.name)
        ids = [str(record.saga_id) for record in records]
        before = await take_snapshot(storage, ids, read_file_ledger(ledger))
        bystanders = [saga_id for saga_id in ids if before.statuses[saga_id] == COMPLETED]
        armed = [saga_id for saga_id in ids if saga_id not in bystanders]
        assert len(bystanders) == 1 and len(armed) == SAGAS, before.statuses

        # Every armed saga was stopped at exactly the same point.
        for saga_id in armed:
            assert before.statuses[saga_id] == case.status_at_kill
            assert before.histories[saga_id] == case.history_at_kill

        env = StepEnv(FileLedger(ledger, tag="recoverer"))
        worker = RecoveryWorker(
            [OrderSaga], env, storage, settings=EngineSettings(lease_seconds=60.0), batch_size=10, concurrency=8
        )
        # The dead runner's leases still hold: nothing is claimable until they expire.
        assert await worker.run_once() == 0
        with pytest.raises(SagaAlreadyRunningError):
            await recover_saga(OrderSaga, uuid.UUID(armed[0]), OrderContext, env, storage)
        assert await expire_leases(db_url) == SAGAS
        # Both ways to recover: recover_saga for some sagas by id, the worker for the rest.
        for saga_id in armed[:BY_ID]:
            if case.final_status == COMPLETED:
                await recover_saga(OrderSaga, uuid.UUID(saga_id), OrderContext, env, storage)
            else:
                with pytest.raises(SagaCompensatedError):
                    await recover_saga(OrderSaga, uuid.UUID(saga_id), OrderContext, env, storage)
        assert await recover_everything(worker) == SAGAS - BY_ID
        assert worker.recovered == {str(case.final_status): SAGAS - BY_ID}

        after = await take_snapshot(storage, ids, read_file_ledger(ledger))
    finally:
        await storage.close()

    problems = [problem for saga_id in ids for problem in promise_problems(saga_id, before, after)]
    assert problems == []
    for saga_id in armed:
        assert after.statuses[saga_id] == case.final_status
        assert dict(count_runs(after.lines(saga_id))) == case.runs, saga_id
    for saga_id in bystanders:
        assert after.lines(saga_id) == before.lines(saga_id)
        assert dict(count_runs(after.lines(saga_id))) == ONCE_EACH


# -- the judge must be able to say no --------------------------------------------------------------


def _snapshot(status: SagaStatus, rows: list[tuple[str, str, str]], lines: list[tuple[str, str]]) -> Snapshot:
    return Snapshot({"s": status}, {"s": rows}, [LedgerLine(action, "s", step) for action, step in lines])


def test_the_judge_flags_every_broken_promise() -> None:
    """A judge that never complains proves nothing: feed it histories that break each promise."""
    reserve = ("reserve", "act", "completed")
    all_done = [reserve, ("charge", "act", "completed"), ("ship", "act", "completed")]
    acts = [("act", "reserve"), ("act", "charge"), ("act", "ship")]
    at_kill = _snapshot(SagaStatus.RUNNING, [reserve], [("act", "reserve"), ("act", "charge")])

    good = _snapshot(COMPLETED, all_done, [*at_kill_lines(at_kill), ("act", "charge"), ("act", "ship")])
    assert promise_problems("s", at_kill, good) == []

    reran_recorded = _snapshot(COMPLETED, all_done, [*at_kill_lines(at_kill), ("act", "reserve"),
                                                     ("act", "charge"), ("act", "ship")])
    assert any("ran again" in p for p in promise_problems("s", at_kill, reran_recorded))

    not_rerun = _snapshot(COMPLETED, all_done, [*at_kill_lines(at_kill), ("act", "ship")])
    assert any("did not run again" in p for p in promise_problems("s", at_kill, not_rerun))

    stuck = _snapshot(SagaStatus.RUNNING, [reserve], at_kill_lines(at_kill))
    assert any("not completed or failed" in p for p in promise_problems("s", at_kill, stuck))

    compensating = _snapshot(
        SagaStatus.COMPENSATING,
        [reserve, ("charge", "act", "completed"), ("ship", "act", "failed")],
        [*acts, ("compensate", "charge")],
    )
    went_forward = _snapshot(
        FAILED,
        [*compensating.histories["s"], ("charge", "compensate", "compensated"),
         ("reserve", "compensate", "compensated")],
        [*at_kill_lines(compensating), ("act", "ship"), ("compensate", "reserve")],
    )
    assert any("after compensation had begun" in p for p in promise_problems("s", compensating, went_forward))

    compensated_thrice = _snapshot(
        FAILED,
        went_forward.histories["s"],
        [*at_kill_lines(compensating), ("compensate", "charge"), ("compensate", "charge"),
         ("compensate", "reserve")],
    )
    assert any("compensation of charge ran 3" in p for p in promise_problems("s", compensating, compensated_thrice))


def at_kill_lines(snapshot: Snapshot) -> list[tuple[str, str]]:
    return [(line.action, line.step) for line in snapshot.ledger]


def test_kill_points_cover_the_four_places_a_runner_can_die() -> None:
    from durability.runner import KILL_POINTS

    assert set(KILL_POINTS) == set(CASES)
