"""SIGKILL of a group-commit runner with a batch in flight loses no step whose completion was reported.

A real process (`durability/batch_runner.py`) runs many sagas at once on a
group-commit storage; each step completion the engine reports (after its
batch committed) is an fsynced ``acked`` ledger line. When every saga is at
``ship``, the test takes a lock on ``saga_log`` that holds the next batch in
flight, lets the sagas go, waits until the runner's batch waits for that lock,
and SIGKILLs the runner. Nothing is timed: the runner announces itself, and
the batch in flight is seen in ``pg_stat_activity``.

Then: every acknowledged step is in the stored history; recovery finishes
every saga, never runs an acknowledged (or otherwise recorded) step again,
and runs only the step in flight (``ship``) a second time, if its batch did
not commit.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import asyncpg
import pytest

from cqrs.saga.recovery import RecoveryWorker
from cqrs.saga.settings import EngineSettings
from cqrs.saga.storage.enums import SagaStatus
from durability.db import expire_leases, open_storage, pg_dsn
from durability.judge import promise_problems, take_snapshot
from durability.saga import FileLedger, OrderSaga, StepEnv, read_file_ledger

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

RUNNER = Path(__file__).parent / "durability" / "batch_runner.py"
SAGAS = 24


async def wait_for_a_lock_waiter(admin: asyncpg.Connection) -> None:
    """Until a backend of this database (the runner's batch) waits for a lock."""
    for _ in range(3000):
        if await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the runner's batch never waited for the lock")


async def wait_until_only_us(admin: asyncpg.Connection) -> None:
    """Until the killed runner's backends have ended (a held batch commits or rolls back first)."""
    for _ in range(3000):
        others = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        if others == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the killed runner's backends are still there")


async def test_sigkill_with_a_batch_in_flight_loses_no_acknowledged_step(postgres_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    storage = await open_storage(postgres_url)  # creates the tables before the runner starts
    admin = await asyncpg.connect(pg_dsn(postgres_url))
    log = tmp_path / "runner.log"
    try:
        with log.open("wb") as stderr:
            runner = await asyncio.create_subprocess_exec(
                sys.executable, str(RUNNER), "--url", postgres_url, "--ledger", str(ledger), "--sagas", str(SAGAS),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            )
            try:
                assert runner.stdout is not None and runner.stdin is not None
                line = await asyncio.wait_for(runner.stdout.readline(), timeout=60)
                assert line.decode().strip() == "at-ship", (line, log.read_text())
                locker = admin.transaction()
                await locker.start()
                await admin.execute("LOCK TABLE saga_log IN SHARE MODE")  # holds every batch (they insert log rows)
                runner.stdin.write(b"go\n")
                await runner.stdin.drain()
                await wait_for_a_lock_waiter(admin)
                runner.send_signal(signal.SIGKILL)
                await asyncio.wait_for(runner.wait(), timeout=60)
                await locker.rollback()
            finally:
                if runner.returncode is None:
                    runner.kill()
                    await runner.wait()
        assert runner.returncode == -signal.SIGKILL, (runner.returncode, log.read_text())
        await storage.engine.dispose()  # this process's own pooled connections, so only the runner's are waited for
        await wait_until_only_us(admin)

        lines = read_file_ledger(ledger)
        acked = {(line.saga_id, line.step) for line in lines if line.action == "acked"}
        records = await storage.list_sagas(name=OrderSaga.name, limit=1000)
        ids = [str(record.saga_id) for record in records]
        assert len(ids) == SAGAS
        before = await take_snapshot(storage, ids, lines)
        # Every step acknowledged before the kill is stored; reserve and charge were, for every saga.
        stored = {(saga_id, step) for saga_id in ids for step, action, status in before.histories[saga_id]
                  if action == "act" and status == "completed"}
        assert acked <= stored, sorted(acked - stored)
        assert {(saga_id, step) for saga_id in ids for step in ("reserve", "charge")} <= acked
        assert not any(line.step == "ship" for line in lines if line.action == "acked")  # held, never reported

        await expire_leases(postgres_url)  # a saga whose held batch committed after the kill has no lease left
        worker = RecoveryWorker([OrderSaga], StepEnv(FileLedger(ledger, tag="recoverer")), storage,
                                settings=EngineSettings(lease_seconds=60.0), batch_size=50, concurrency=8)
        while await worker.run_once():
            pass
        after = await take_snapshot(storage, ids, read_file_ledger(ledger))
    finally:
        await admin.close()
        await storage.close()
    problems = [problem for saga_id in ids for problem in promise_problems(saga_id, before, after)]
    assert problems == []
    assert set(after.statuses.values()) == {SagaStatus.COMPLETED}
    for saga_id in ids:
        runs = [line.step for line in after.lines(saga_id) if line.action == "act"]
        assert runs.count("reserve") == 1 and runs.count("charge") == 1, (saga_id, runs)
        assert runs.count("ship") in (1, 2), (saga_id, runs)
