"""The database connections of a recoverer are killed while it is inside a step or a compensation.

Losing the database is not a saga failure: the saga must stay resumable (its
status unchanged, the recovery attempt counted), it must not be marked failed
and nothing may be compensated because of it. The same worker, on the same
storage (whose pool held the killed connections), finishes it on a later pass,
running the step or compensation that was in flight at most twice.

The kill is deterministic: a gate stops the step inside ``act`` (or
``compensate``) after its effect; the test kills the storage's backends
(``pg_terminate_backend``, found by their ``application_name``) and only then
lets the step return, so the engine's next write meets a dead connection.
"""

from __future__ import annotations

import asyncio
import collections
import typing
from pathlib import Path

import pytest

import group_commit_switch
from cqrs.saga.recovery import RecoveryWorker
from cqrs.saga.settings import EngineSettings
from cqrs.saga.storage.enums import SagaStatus
from durability.db import (
    DEAD_OWNER,
    SHIP_ERROR,
    expire_leases,
    open_storage,
    seed_compensating,
    seed_interrupted,
    terminate_backends,
)
from durability.judge import count_runs, promise_problems, take_snapshot
from durability.saga import STEP_NAMES, FileLedger, Gates, OrderSaga, StepEnv, read_file_ledger

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["postgres", "postgres-group-commit"])
def postgres_url(request: pytest.FixtureRequest, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """conftest's fresh PostgreSQL database, its storages without and with group commit (`group_commit_switch`)."""
    if request.param == "postgres-group-commit":
        monkeypatch.setenv(group_commit_switch.ENV, "1")
    return postgres_url

APP_NAME = "cqrs-victim-recoverer"


class Case(typing.NamedTuple):
    status: SagaStatus  # where the seeded saga stands, before and after the lost attempt
    error: str | None  # its stored error, untouched by the lost attempt
    gate: tuple[str, str]  # where the step code stops while the connections are killed
    final: SagaStatus
    runs: dict[tuple[str, str], int]  # ledger counts over both attempts


CASES = {
    # reserve recorded; charge takes effect, then its completion cannot be written.
    "in_act": Case(
        SagaStatus.RUNNING, None, ("after_act", "charge"), SagaStatus.COMPLETED,
        {("act", "charge"): 2, ("act", "ship"): 1},
    ),
    # ship failed, compensating; charge's and reserve's compensations take effect, then cannot be recorded
    # (they are recorded together, in one commit): recovery runs both again.
    "in_compensation": Case(
        SagaStatus.COMPENSATING, SHIP_ERROR, ("after_compensate", "charge"), SagaStatus.FAILED,
        {("compensate", "charge"): 2, ("compensate", "reserve"): 2},
    ),
}


@pytest.mark.parametrize("where", list(CASES))
async def test_killed_connections_mid_step_leave_the_saga_resumable(
    postgres_url: str, tmp_path: Path, where: str
) -> None:
    case = CASES[where]
    ledger = tmp_path / "ledger.txt"
    storage = await open_storage(postgres_url)
    try:
        if case.status == SagaStatus.RUNNING:
            [saga_id] = await seed_interrupted(storage, 1, steps_done=lambda _: 1)
        else:
            [saga_id] = await seed_compensating(storage, 1)
        seeded_history = await storage.get_step_history(saga_id)
    finally:
        await storage.close()
    assert await expire_leases(postgres_url) == 1

    gates = Gates()
    in_step = gates.gate(*case.gate)
    victim_storage = await open_storage(
        postgres_url, create=False, connect_args={"server_settings": {"application_name": APP_NAME}}
    )
    victim = RecoveryWorker([OrderSaga], StepEnv(FileLedger(ledger, tag="victim"), gates), victim_storage,
                            settings=EngineSettings(lease_seconds=60.0))
    observer = await open_storage(postgres_url, create=False)
    try:
        recovery = asyncio.ensure_future(victim.run_once())
        await asyncio.wait_for(in_step.entered.wait(), 30)  # the effect is done; the worker holds pooled connections
        assert await terminate_backends(postgres_url, APP_NAME) >= 1
        in_step.release.set()  # its next write (recording the step) meets a dead connection
        assert await asyncio.wait_for(recovery, 30) == 1
        assert victim.recovered == {"error": 1}

        # Still resumable, attempt counted, nothing new recorded, not failed, nothing compensated for it.
        record = await observer.get_saga(saga_id)
        assert record is not None
        assert record.status == case.status, record
        assert record.error == case.error
        assert record.recovery_attempts == 1
        assert await observer.get_step_history(saga_id) == seeded_history
        if case.status == SagaStatus.RUNNING:
            assert [line for line in read_file_ledger(ledger) if line.action == "compensate"] == []

        # A later pass of the same worker, on the same storage, finishes it.
        before = await take_snapshot(observer, [saga_id], read_file_ledger(ledger))
        assert await expire_leases(postgres_url) == 0  # the worker released it after the error
        gates.gates.clear()
        assert await victim.run_once() == 1
        assert victim.recovered == {"error": 1, str(case.final): 1}
        assert await victim.run_once() == 0
        after = await take_snapshot(observer, [saga_id], read_file_ledger(ledger))
        record = await observer.get_saga(saga_id)
        assert record is not None and record.recovery_attempts == 2
    finally:
        await victim_storage.close()
        await observer.close()

    assert after.statuses[str(saga_id)] == case.final
    assert promise_problems(str(saga_id), before, after) == []
    runs = count_runs(after.lines(str(saga_id)))
    assert dict(runs) == case.runs  # nothing recorded before the loss ran again; the step in flight ran twice


async def test_a_worker_whose_idle_connections_were_killed_recovers_on_its_next_pass(
    postgres_url: str, tmp_path: Path
) -> None:
    """Pooled connections killed while idle (a database restart, a failover): the first claim meets a dead one and
    fails with the driver's error (the connection invalidated), which is not a saga failure: nothing is claimed, no
    step runs. The pool then replaces the other dead ones too, so the next pass finishes every saga.

    Deterministic: every connection the pool holds is killed, nothing is checked out, and the pool does not
    pre-ping, so the claim's checkout is bound to hand out a dead connection.
    """
    import sqlalchemy.exc

    ledger = tmp_path / "ledger.txt"
    storage = await open_storage(
        postgres_url, pool_pre_ping=False, connect_args={"server_settings": {"application_name": APP_NAME}}
    )
    # Reads go through another pool, so the worker's passes are the only users of its pool's dead connections.
    observer = await open_storage(postgres_url, create=False)
    try:
        seeded = await seed_interrupted(storage, 6)
        assert await expire_leases(postgres_url) == 6
        if storage.group_commit:
            await storage.close()  # its writer gives back the connections it holds between batches
        await asyncio.gather(*(storage.get_saga(saga_id) for saga_id in seeded))  # several pooled connections
        pool = storage.engine.sync_engine.pool
        assert pool.checkedout() == 0 and pool.checkedin() >= 2
        # Every pooled connection is this application's, so every one is killed (others may be closing still).
        assert await terminate_backends(postgres_url, APP_NAME) >= pool.checkedin()
        worker = RecoveryWorker([OrderSaga], StepEnv(FileLedger(ledger, tag="worker")), storage,
                                settings=EngineSettings(lease_seconds=60.0))
        with pytest.raises(sqlalchemy.exc.DBAPIError) as lost:
            await worker.run_once()
        assert lost.value.connection_invalidated
        assert worker.recovered == {}
        assert read_file_ledger(ledger) == []
        untouched = [await observer.get_saga(saga_id) for saga_id in seeded]
        assert [(r.recovery_attempts, r.owner) if r else None for r in untouched] == [(0, DEAD_OWNER)] * 6

        assert await worker.run_once() == 6
        assert await worker.run_once() == 0
        records = [await observer.get_saga(saga_id) for saga_id in seeded]
    finally:
        await storage.close()
        await observer.close()
    assert worker.recovered == {"completed": 6}
    assert [record.status if record else None for record in records] == [SagaStatus.COMPLETED] * 6
    runs = count_runs(read_file_ledger(ledger))
    expected: collections.Counter[tuple[str, str]] = collections.Counter(
        ("act", step) for done in seeded.values() for step in STEP_NAMES[done:]
    )
    assert runs == expected  # every remaining step exactly once
