"""Promise 6 across a crash: a step's events are in the outbox if and only if its checkpoint committed.

A real runner process (outbox on) runs ten sagas and is SIGKILLed with every
one of them at ``charge``'s checkpoint: before it was sent, or just after it
committed. Every run of a step wrote the id of the event it emitted to an
fsynced ledger first. Then:

- at the kill, the outbox holds exactly the events of the committed steps
  (``reserve``'s; and ``charge``'s with ``after_commit``) — not the events of
  the ``charge`` run whose checkpoint never committed;
- recovery (outbox on) finishes the sagas and a relay publishes: every saga's
  three events reach the broker once each, in order, each the event of the
  step run whose checkpoint committed. No committed event was lost; none that
  was not committed left.

On SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import database_url
from cqrs.outbox import OutboxRelay
from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.recovery import RecoveryWorker
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage, saga_executions
from outbox_broker import MemoryBroker
from outbox_helpers import open_storage
from outbox_saga import STEPS, Steps, read_ledger, saga_map

TESTS = Path(__file__).parent
RUNNER = TESTS / "outbox_saga_process.py"
SAGAS = 10

pytestmark = pytest.mark.slow


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
            pytest.param("postgres-group-commit", marks=pytest.mark.postgres),
            pytest.param("mariadb", marks=pytest.mark.mariadb)]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """SQLite, PostgreSQL (also with group commit, in the runner process too), MariaDB."""
    return database_url(request, request.param)


async def killed_at_charge(url: str, ledger: Path, kill: str) -> None:
    """Run the sagas in a real process and SIGKILL it once all are at charge's checkpoint."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(RUNNER), "--url", url, "--ledger", str(ledger), "--kill", kill, "--sagas", str(SAGAS),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line == b"at-kill-point\n", (line, (await proc.stderr.read()).decode() if proc.stderr else "")
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def expire_saga_leases(storage: SqlAlchemySagaStorage) -> int:
    past = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    async with storage.engine.begin() as conn:
        result = await conn.execute(
            sa.update(saga_executions).where(saga_executions.c.owner.is_not(None)).values(lease_expires_at=past)
        )
        return int(result.rowcount)


@pytest.mark.parametrize("kill", ["before_commit", "after_commit"])
async def test_a_killed_runners_steps_left_exactly_their_committed_events(
    db_url: str, kill: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    await killed_at_charge(db_url, ledger, kill)
    storage = await open_storage(db_url)
    assert isinstance(storage, SqlAlchemySagaStorage)
    try:
        runs: dict[tuple[str, str], list[str]] = collections.defaultdict(list)  # (saga, step) -> each run's event
        for line in read_ledger(ledger):
            runs[(line.saga_id, line.step)].append(line.event_id)
        sagas = sorted({saga for saga, _ in runs})
        assert len(sagas) == SAGAS
        committed = ["reserve", "charge"] if kill == "after_commit" else ["reserve"]
        at_kill = await storage.list_outbox(limit=10_000)
        assert sorted(str(r.message_id) for r in at_kill) == sorted(
            runs[(saga, step)][0] for saga in sagas for step in committed
        )

        assert await expire_saga_leases(storage) == SAGAS
        worker = RecoveryWorker(
            bootstrap(Steps(ledger), sagas_mapper=saga_map(), saga_storage=storage, outbox=True, lease_seconds=60.0)
        )
        while await worker.run_once():
            pass
        for saga in sagas:
            record = await storage.get_saga(uuid.UUID(saga))
            assert record is not None and record.status == SagaStatus.COMPLETED
        broker = MemoryBroker()
        await OutboxRelay(storage, broker).drain()
    finally:
        await storage.close()

    runs.clear()
    for line in read_ledger(ledger):  # with the recovery's runs now
        runs[(line.saga_id, line.step)].append(line.event_id)
    published: dict[str, list[str]] = collections.defaultdict(list)
    for message in broker.sent:
        assert message.headers is not None
        published[message.headers["saga-id"]].append(str(message.message_id))
    for saga in sagas:
        # Each step's event is the one of its last run: the run whose checkpoint committed.
        assert published[saga] == [runs[(saga, step)][-1] for step in STEPS]
        assert len(runs[(saga, "charge")]) == (1 if kill == "after_commit" else 2)
    assert len(broker.sent) == 3 * SAGAS  # once each
