"""Recoverers racing over the same interrupted sagas, and a paused runner that lost its saga.

Race: 200 sagas are left as a dead runner would leave them (0, 1 or 2 of their
3 steps recorded, lease expired), then 8 recoverers start together — as 8
asyncio tasks with their own storage each, or as 8 processes; recovering with
`RecoveryWorker` (claims with SKIP LOCKED) or by calling `recover_saga` on
every saga in the same order (claims of one saga collide); on PostgreSQL and on
MariaDB. The ledger (on PostgreSQL a table written by the steps in their own
transactions, on MariaDB an fsynced file per recoverer) must show every
remaining step exactly once and no recorded step again, and every saga must end
completed. The same with 4 processes on SQLite (fsynced ledger files), where
the single writer lock, not SKIP LOCKED, keeps claims apart.

Lease expiry is controlled, not waited for: the seeded leases are moved into
the past by SQL before the start, and the recoverers' own leases (60 s) never
expire during a test.

Paused runner: a runner stalled inside a step past its lease is taken over;
when it wakes up its checkpoint is refused and it writes nothing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import typing
import uuid
from pathlib import Path

import pytest

from conftest import database_url
from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.exceptions import SagaOwnershipLostError
from cqrs.saga.map import SagaMap
from cqrs.saga.recovery import RecoveryWorker, recover_saga
from cqrs.saga.settings import EngineSettings
from cqrs.saga.storage.enums import SagaStatus
from durability.db import expire_leases, open_storage, pg_dsn, seed_interrupted
from durability.judge import count_runs, promise_problems, take_snapshot
from durability.saga import (
    STEP_NAMES,
    FileLedger,
    Gate,
    Gates,
    LedgerLine,
    OrderContext,
    OrderSaga,
    PgLedger,
    StepEnv,
    read_file_ledger,
    read_pg_ledger,
)

RUNNER = Path(__file__).parent / "durability" / "runner.py"
SAGAS = 200
RECOVERERS = 8
BATCH = 8
CONCURRENCY = 4
SQLITE_SAGAS = 60
BY_ID_SAGAS = 50
BY_ID_PROCESSES = 4
SQLITE_RECOVERERS = 4


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-group-commit", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def race_url(request: pytest.FixtureRequest) -> str:
    """A fresh database the recoverers race on: PostgreSQL (also with group commit, in this process and the
    recoverer processes), then MariaDB."""
    return database_url(request, request.param)


class Ledgers:
    """Where the racing recoverers' steps record their runs: PostgreSQL's ledger table, or an fsynced file per
    recoverer (MariaDB)."""

    def __init__(self, url: str, directory: Path) -> None:
        self.url = url
        self.directory = directory
        self.postgres = url.startswith("postgresql")
        self.pool: typing.Any = None

    async def open(self) -> Ledgers:
        """Connect (PostgreSQL: a pool for the recoverer tasks' ledger writes)."""
        if self.postgres:
            import asyncpg

            self.pool = await asyncpg.create_pool(pg_dsn(self.url), min_size=1, max_size=RECOVERERS)
        return self

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def ledger(self, tag: str) -> typing.Any:
        if self.postgres:
            return PgLedger(self.pool, tag)
        return FileLedger(self.directory / f"ledger-{tag}.txt", tag=tag)

    def args(self, tag: str) -> list[str]:
        """The runner's arguments for recoverer ``tag``'s ledger."""
        return ["--pg-ledger"] if self.postgres else ["--ledger", str(self.directory / f"ledger-{tag}.txt")]

    def lines(self) -> list[LedgerLine] | None:
        """Every run the files recorded (None on PostgreSQL: `judge_race` reads the table)."""
        if self.postgres:
            return None
        return [line for path in sorted(self.directory.glob("ledger-*.txt")) for line in read_file_ledger(path)]


async def seeded_database(url: str, sagas: int = SAGAS) -> dict[uuid.UUID, int]:
    """Create the storage (and on PostgreSQL the ledger) tables, store the interrupted sagas, expire their leases."""
    storage = await open_storage(url)
    try:
        seeded = await seed_interrupted(storage, sagas)
    finally:
        await storage.close()
    if url.startswith("postgresql"):
        import asyncpg

        conn = await asyncpg.connect(pg_dsn(url))
        try:
            await PgLedger.create_tables(conn)
        finally:
            await conn.close()
    assert await expire_leases(url) == sagas
    return seeded


async def judge_race(url: str, seeded: dict[uuid.UUID, int], ledger: list[LedgerLine] | None = None) -> dict[str, int]:
    """Every saga completed, every step ran exactly once overall; returns sagas claimed per worker tag.

    ``ledger`` defaults to the PostgreSQL ledger table (whose effects table is checked too).
    """
    effects = None
    if ledger is None:
        import asyncpg

        conn = await asyncpg.connect(pg_dsn(url))
        try:
            ledger = await read_pg_ledger(conn)
            effects = await conn.fetchval("SELECT count(*) FROM effects")
        finally:
            await conn.close()
    storage = await open_storage(url, create=False)
    try:
        snapshot = await take_snapshot(storage, seeded, ledger)
    finally:
        await storage.close()

    problems: list[str] = []
    for saga_id, done in seeded.items():
        key = str(saga_id)
        if snapshot.statuses[key] != SagaStatus.COMPLETED:
            problems.append(f"{key} ended {snapshot.statuses[key]}")
        expected = {("act", step): 1 for step in STEP_NAMES[done:]}
        runs = dict(count_runs(snapshot.lines(key)))
        if runs != expected:
            problems.append(f"{key} had {done} steps recorded; ran {runs}, expected {expected}")
        completed = [row[0] for row in snapshot.histories[key] if row[1:] == ("act", "completed")]
        if completed != list(STEP_NAMES):
            problems.append(f"{key} recorded completions {completed}")
    assert problems == [], "\n".join(problems[:20])
    if effects is not None:
        assert effects == sum(len(STEP_NAMES) - done for done in seeded.values())
    # Who ran a saga's steps is who claimed it: one worker per saga.
    tags_per_saga = {line.saga_id: set() for line in ledger}
    for line in ledger:
        tags_per_saga[line.saga_id].add(line.tag)
    assert all(len(tags) == 1 for tags in tags_per_saga.values())
    return dict(collections.Counter(next(iter(tags)) for tags in tags_per_saga.values()))


class StartLine:
    """Lets ``parties`` tasks start together: each waits until all have arrived (asyncio.Barrier is 3.11+)."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.all_here = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.parties:
            self.all_here.set()
        await self.all_here.wait()


@pytest.mark.slow
async def test_eight_recoverer_tasks_finish_each_saga_exactly_once(race_url: str, tmp_path: Path) -> None:
    seeded = await seeded_database(race_url)
    ledgers = await Ledgers(race_url, tmp_path).open()
    start = StartLine(RECOVERERS)
    workers: list[RecoveryWorker] = []

    async def recoverer(number: int) -> int:
        storage = await open_storage(race_url, create=False)
        worker = RecoveryWorker(
            [OrderSaga],
            StepEnv(ledgers.ledger(f"task{number}")),
            storage,
            settings=EngineSettings(lease_seconds=60.0),
            batch_size=BATCH,
            concurrency=CONCURRENCY,
        )
        workers.append(worker)
        try:
            await storage.get_saga(uuid.uuid4())  # connected before the start
            await start.wait()
            claimed = 0
            for _ in range(100):
                count = await worker.run_once()
                if count == 0:
                    return claimed
                claimed += count
            raise AssertionError(f"task{number} still claiming after 100 passes")
        finally:
            await storage.close()

    try:
        claimed = await asyncio.wait_for(asyncio.gather(*(recoverer(n) for n in range(RECOVERERS))), 60)
    finally:
        await ledgers.close()

    assert sum(claimed) == SAGAS  # no saga claimed twice
    outcomes: collections.Counter[str] = collections.Counter()
    for worker in workers:
        outcomes.update(worker.recovered)
    assert outcomes == {"completed": SAGAS}
    per_worker = await judge_race(race_url, seeded, ledgers.lines())
    assert len(per_worker) >= 2, per_worker  # they really raced


async def race_processes(url: str, processes: int, ledger_args: typing.Callable[[int], list[str]]) -> list[typing.Any]:
    """Start ``processes`` recoverers, let them all connect, start them at once; returns their summaries."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(RUNNER), "recover", "--url", url, *ledger_args(n), "--tag", f"proc{n}",
            "--batch-size", str(BATCH), "--concurrency", str(CONCURRENCY),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for n in range(processes)
    ]
    try:
        # The start line: every process is connected and waiting before any may claim.
        for proc in procs:
            assert proc.stdout is not None
            ready = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert ready == b"ready\n", ready
        results = await asyncio.wait_for(
            asyncio.gather(*(proc.communicate(b"go\n") for proc in procs)), 60
        )
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    summaries = []
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
        summaries.append(json.loads(out.decode().strip().splitlines()[-1]))
    return summaries


def assert_each_saga_claimed_once(summaries: list[typing.Any], sagas: int) -> None:
    assert sum(summary["claimed"] for summary in summaries) == sagas
    outcomes: collections.Counter[str] = collections.Counter()
    for summary in summaries:
        outcomes.update(summary["outcomes"])
    assert outcomes == {"completed": sagas}


@pytest.mark.slow
async def test_eight_recoverer_processes_finish_each_saga_exactly_once(race_url: str, tmp_path: Path) -> None:
    seeded = await seeded_database(race_url)
    ledgers = Ledgers(race_url, tmp_path)
    summaries = await race_processes(race_url, RECOVERERS, lambda n: ledgers.args(f"proc{n}"))
    assert_each_saga_claimed_once(summaries, SAGAS)
    per_worker = await judge_race(race_url, seeded, ledgers.lines())
    assert len(per_worker) >= 2, per_worker


def assert_only_refusals(outcomes: collections.Counter[str], sagas: int, *, collided: bool = True) -> None:
    """Every recover_saga call finished the saga (or found it finished) or was refused (and, if
    ``collided``, some were: the recoverers really met on a saga)."""
    assert set(outcomes) <= {"ok", "SagaAlreadyRunningError"}, outcomes
    assert outcomes["ok"] >= sagas
    if collided:
        assert outcomes["SagaAlreadyRunningError"] > 0, f"the recoverers never met on a saga: {outcomes}"


@pytest.mark.slow
async def test_eight_tasks_calling_recover_saga_on_every_saga_run_each_step_once(
    race_url: str, tmp_path: Path
) -> None:
    """All 8 tasks go through the sagas in the same order, so they collide on each one.

    They share this process's lease owner, so the storage lease alone does not
    keep them apart: a claim by the same owner is granted (and fences the
    earlier run). The engine must refuse the claim while another run of the
    process is inside the saga, or a step in flight is run again.
    """
    seeded = await seeded_database(race_url)
    order = list(seeded)  # oldest first, the same for every task
    ledgers = await Ledgers(race_url, tmp_path).open()
    start = StartLine(RECOVERERS)
    outcomes: collections.Counter[str] = collections.Counter()

    async def recoverer(number: int) -> None:
        storage = await open_storage(race_url, create=False)
        env = StepEnv(ledgers.ledger(f"task{number}"))
        try:
            await storage.get_saga(uuid.uuid4())
            await start.wait()
            for saga_id in order:
                try:
                    await recover_saga(OrderSaga, saga_id, OrderContext, env, storage, lease_seconds=60.0)
                except Exception as error:
                    outcomes[type(error).__name__] += 1
                else:
                    outcomes["ok"] += 1
        finally:
            await storage.close()

    try:
        await asyncio.wait_for(asyncio.gather(*(recoverer(n) for n in range(RECOVERERS))), 60)
    finally:
        await ledgers.close()
    assert sum(outcomes.values()) == RECOVERERS * SAGAS
    per_worker = await judge_race(race_url, seeded, ledgers.lines())
    assert_only_refusals(outcomes, SAGAS)
    assert len(per_worker) >= 2, per_worker


@pytest.mark.slow
async def test_processes_calling_recover_saga_on_every_saga_run_each_step_once(race_url: str, tmp_path: Path) -> None:
    """The same across processes: each has its own lease owner, so the lease refuses the others.

    Fewer sagas and processes: colliding on every saga makes the processes take turns.
    """
    seeded = await seeded_database(race_url, BY_ID_SAGAS)
    ledgers = Ledgers(race_url, tmp_path)
    summaries = await race_processes(race_url, BY_ID_PROCESSES, lambda n: [*ledgers.args(f"proc{n}"), "--by-id"])
    outcomes: collections.Counter[str] = collections.Counter()
    for summary in summaries:
        assert summary["sagas"] == BY_ID_SAGAS
        outcomes.update(summary["outcomes"])
    per_worker = await judge_race(race_url, seeded, ledgers.lines())
    # Processes start a few milliseconds apart, so a collision is likely but not certain here.
    assert_only_refusals(outcomes, BY_ID_SAGAS, collided=False)
    assert len(per_worker) >= 2, per_worker


@pytest.mark.slow
async def test_recoverer_processes_on_sqlite_finish_each_saga_exactly_once(sqlite_url: str, tmp_path: Path) -> None:
    """SQLite has one writer at a time: the claim statement alone must keep two processes off one saga."""
    storage = await open_storage(sqlite_url)
    try:
        seeded = await seed_interrupted(storage, SQLITE_SAGAS)
    finally:
        await storage.close()
    assert await expire_leases(sqlite_url) == SQLITE_SAGAS
    summaries = await race_processes(
        sqlite_url, SQLITE_RECOVERERS, lambda n: ["--ledger", str(tmp_path / f"ledger-{n}.txt")]
    )
    assert_each_saga_claimed_once(summaries, SQLITE_SAGAS)
    ledger = [line for n in range(SQLITE_RECOVERERS) for line in read_file_ledger(tmp_path / f"ledger-{n}.txt")]
    per_worker = await judge_race(sqlite_url, seeded, ledger)
    assert len(per_worker) >= 2, per_worker


# -- a paused runner must not write ------------------------------------------------------------------


def _saga_map() -> SagaMap:
    mapping = SagaMap()
    mapping.bind(OrderContext, OrderSaga)
    return mapping


async def _row(storage: typing.Any, saga_id: uuid.UUID) -> tuple[typing.Any, ...]:
    record = await storage.get_saga(saga_id)
    assert record is not None
    return (record.status, record.context, record.version, record.owner, record.lease_epoch,
            record.lease_expires_at, record.error, record.updated_at)


async def _recover_in_another_process(url: str, ledger: Path) -> dict[str, typing.Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(RUNNER), "recover", "--url", url, "--ledger", str(ledger), "--tag", "taker",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(b"go\n"), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().split()
    assert lines[0] == "ready"
    return typing.cast(dict[str, typing.Any], json.loads(out.decode().splitlines()[-1]))


async def paused_past_its_lease(
    race_url: str, storage: typing.Any, ledger: Path
) -> tuple[uuid.UUID, asyncio.Future[typing.Any], Gate]:
    """A runner inside charge's act, its effect done, that stalls there past its lease (until its gate opens)."""
    gates = Gates()
    paused = gates.gate("after_act", "charge")
    mediator = bootstrap(
        StepEnv(FileLedger(ledger, tag="paused"), gates),
        sagas_mapper=_saga_map(),
        saga_storage=storage,
        lease_seconds=60.0,
    )
    saga_id = uuid.uuid4()
    run = asyncio.ensure_future(mediator.run(OrderContext(order=1), saga_id=saga_id))
    await paused.entered.wait()
    assert await expire_leases(race_url) == 1
    return saga_id, run, paused


@pytest.mark.slow
async def test_a_runner_paused_past_its_lease_writes_nothing_after_a_takeover(
    race_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    storage = await open_storage(race_url)
    try:
        saga_id, run, paused = await paused_past_its_lease(race_url, storage, ledger)
        summary = await _recover_in_another_process(race_url, ledger)  # another process takes over
        assert summary["claimed"] == 1 and summary["outcomes"] == {"completed": 1}
        taken_over = await _row(storage, saga_id)
        history = await storage.get_step_history(saga_id)
        assert taken_over[0] == SagaStatus.COMPLETED

        paused.release.set()  # the stalled runner wakes up and tries to record charge
        with pytest.raises(SagaOwnershipLostError):
            await asyncio.wait_for(run, 30)

        assert await _row(storage, saga_id) == taken_over
        assert await storage.get_step_history(saga_id) == history
    finally:
        await storage.close()
    lines = read_file_ledger(ledger)
    assert [(line.action, line.step, line.tag) for line in lines] == [
        ("act", "reserve", "paused"),
        ("act", "charge", "paused"),
        ("act", "charge", "taker"),
        ("act", "ship", "taker"),
    ]


@pytest.mark.slow
async def test_a_paused_runner_is_fenced_even_when_the_claim_came_from_its_own_process(
    race_url: str, tmp_path: Path
) -> None:
    """In one process the engine refuses to run a saga twice; the claim alone still fences the paused run."""
    ledger = tmp_path / "ledger.txt"
    storage = await open_storage(race_url)
    other_storage = await open_storage(race_url, create=False)
    try:
        saga_id, run, paused = await paused_past_its_lease(race_url, storage, ledger)

        same_process = RecoveryWorker([OrderSaga], StepEnv(FileLedger(ledger, tag="local")), other_storage,
                                      settings=EngineSettings(lease_seconds=60.0))
        assert await same_process.run_once() == 1
        assert same_process.recovered == {"error": 1}  # SagaAlreadyRunningError: it released the saga
        claimed = await _row(storage, saga_id)
        history = await storage.get_step_history(saga_id)

        paused.release.set()
        with pytest.raises(SagaOwnershipLostError):
            await asyncio.wait_for(run, 30)
        assert await _row(storage, saga_id) == claimed
        assert await storage.get_step_history(saga_id) == history

        before = await take_snapshot(storage, [saga_id], read_file_ledger(ledger))
        assert await same_process.run_once() == 1
        after = await take_snapshot(storage, [saga_id], read_file_ledger(ledger))
    finally:
        await other_storage.close()
        await storage.close()
    assert promise_problems(str(saga_id), before, after) == []
    assert dict(count_runs(after.ledger)) == {("act", "reserve"): 1, ("act", "charge"): 2, ("act", "ship"): 1}
