"""Recovered sagas per second: `recover_saga` and `RecoveryWorker`, this code against a base commit, same run.

    .venv/bin/python benchmarks/bench_recovery.py                  # PostgreSQL, 5 rounds, about 5 minutes
    .venv/bin/python benchmarks/bench_recovery.py --quick          # a smoke run: 1 round of 200 sagas
    .venv/bin/python benchmarks/bench_recovery.py --base none      # this code only, no comparison
    .venv/bin/python benchmarks/bench_recovery.py --base HEAD~3    # against any commit
    .venv/bin/python benchmarks/bench_recovery.py --url sqlite+aiosqlite:////tmp/r.db

Each run seeds ``--sagas`` interrupted sagas (the 3-step no-op saga of
bench_saga.py, stopped after its second step, its lease free) and times their
recovery from ``--concurrency`` tasks: either ``recover_saga`` one saga id per
call (mode ``recover_saga``), or a `RecoveryWorker` with that concurrency
claiming batches of ``--batch-size`` (mode ``worker``). Recovering one saga
is its claim and its last step's checkpoint.

The base side is the same script run against another commit's ``src``
(checked out with ``git worktree`` under a temporary directory, removed at the
end), so both sides seed and time exactly the same way through the public API.
Every run is a subprocess of its own; in each round both sides run each mode
once, the side that goes first alternating. The figure judged is the median,
over the rounds, of current ÷ base in the same round. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import typing
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _base_code import checkout, run_importing  # noqa: E402 (needs HERE on the path)

#: The last commit before lean recovery (claims and histories in one statement, on the fast path).
DEFAULT_BASE = "ad92db3"
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/cqrs_bench_recovery"
MODES = ("recover_saga", "worker")
POOL_SIZE = 16


# -- one run (a subprocess, importing whichever cqrs its PYTHONPATH gives) -----------------------


class Finished:
    """A hook that counts finished runs and stops the worker once all seeded sagas are done."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.statuses: dict[str, int] = {}
        self.on_all: typing.Callable[[], None] | None = None

    def saga_finished(self, run: typing.Any, status: typing.Any, error: str | None) -> None:
        self.count += 1
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if self.count >= self.expected and self.on_all is not None:
            self.on_all()


async def seed(storage: typing.Any, mediator: typing.Any, sagas: int) -> list[uuid.UUID]:
    """``sagas`` sagas stopped after their second step, with free leases: one run by the engine, the
    rest copies of its rows (any storage version's tables, read by reflection)."""
    import sqlalchemy as sa
    from bench_saga import BenchContext

    template = uuid.uuid4()
    async with contextlib.aclosing(mediator.stream(BenchContext(order=0), saga_id=template)) as results:
        done = 0
        async for _ in results:
            done += 1
            if done == 2:
                break
    engine = storage.engine
    ids = [template]
    async with engine.begin() as conn:
        tables = await conn.run_sync(lambda sync: _reflect(sync, sa))
        executions, log = tables["saga_executions"], tables["saga_log"]
        row = (await conn.execute(sa.select(executions))).mappings().one()
        entries = (await conn.execute(sa.select(log).order_by(log.c.seq))).mappings().all()
        as_text = isinstance(row["id"], str)
        for start in range(0, sagas - 1, 1000):
            batch = [uuid.uuid4() for _ in range(min(1000, sagas - 1 - start))]
            ids += batch
            keys = [saga_id.hex if as_text else saga_id for saga_id in batch]
            await conn.execute(executions.insert(), [{**row, "id": key} for key in keys])
            copies = [{k: v for k, v in entry.items() if k != "seq"} for entry in entries]
            await conn.execute(log.insert(), [{**copy, "saga_id": key} for key in keys for copy in copies])
        await conn.execute(executions.update().values(owner=None, lease_expires_at=None))
    return ids


def _reflect(sync: typing.Any, sa: typing.Any) -> typing.Any:
    metadata = sa.MetaData()
    metadata.reflect(sync, only=["saga_executions", "saga_log"])
    return metadata.tables


async def pg_commits(url: str, *, after_close: bool = False) -> int | None:
    """Committed transactions of the database so far (PostgreSQL only; see bench_saga.py)."""
    if not url.startswith("postgresql"):
        return None
    import asyncpg
    from bench_saga import pg_dsn

    conn = await asyncpg.connect(pg_dsn(url))
    try:
        for _ in range(1000 if after_close else 0):
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
            if others == 0:
                break
            await asyncio.sleep(0.01)
        return int(await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))
    finally:
        await conn.close()


async def side_run(url: str, mode: str, sagas: int, concurrency: int, batch_size: int,
                   group_commit: bool = False) -> dict[str, typing.Any]:
    """Seed, then recover every seeded saga in ``mode`` (on a group-commit storage with ``group_commit``);
    what it took."""
    import sqlalchemy as sa
    from bench_saga import BenchContext, BenchSaga, Steps, _saga_map

    import cqrs
    from cqrs.saga.bootstrap import bootstrap
    from cqrs.saga.recovery import recover_saga
    from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

    extra = {"group_commit": True} if group_commit else {}
    storage = SqlAlchemySagaStorage.from_url(url, pool_size=POOL_SIZE, max_overflow=0, **extra) if not url.startswith(
        "sqlite") else SqlAlchemySagaStorage.from_url(url)
    finished = Finished(sagas)
    mediator = bootstrap(Steps(), sagas_mapper=_saga_map(), saga_storage=storage, hooks=[finished])
    try:
        await storage.create_tables()
        postgres = url.startswith("postgresql")
        async with storage.engine.begin() as conn:
            if url.startswith("sqlite"):
                await conn.execute(sa.text("DELETE FROM saga_log"))
                await conn.execute(sa.text("DELETE FROM saga_executions"))
            else:  # no dead rows left from the last run, whichever side made it
                await conn.execute(sa.text("TRUNCATE TABLE saga_log"))
                await conn.execute(sa.text("TRUNCATE TABLE saga_executions"))
            if postgres:  # autovacuum's transactions would count as commits (see bench_saga.py)
                for table in ("saga_executions", "saga_log"):
                    await conn.execute(sa.text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
        ids = await seed(storage, mediator, sagas)
        if postgres:
            async with storage.engine.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await auto.execute(sa.text("ANALYZE saga_executions, saga_log"))
        finished.count, finished.statuses = 0, {}
        await asyncio.gather(*(storage.get_saga(uuid.uuid4()) for _ in range(min(concurrency, POOL_SIZE))))
        before = await pg_commits(url)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if mode == "recover_saga":
            pending = list(reversed(ids))

            async def recover_some() -> None:
                while pending:
                    await recover_saga(BenchSaga, pending.pop(), BenchContext, None, storage, mediator=mediator)

            await asyncio.gather(*(recover_some() for _ in range(concurrency)))
        else:
            worker = mediator.recovery_worker(concurrency=concurrency, batch_size=batch_size, poll_interval=60.0)
            finished.on_all = worker.stop
            await worker.run()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        async with storage.engine.connect() as conn:
            completed = (await conn.execute(
                sa.text("SELECT count(*) FROM saga_executions WHERE status = 'completed'")
            )).scalar_one()
    finally:
        await storage.close()
    commits = await pg_commits(url, after_close=True)
    if completed != sagas:
        raise SystemExit(f"{mode}: {completed} of {sagas} sagas completed ({finished.statuses})")
    return {
        "mode": mode,
        "sagas": sagas,
        "seconds": wall,
        "sagas_per_s": sagas / wall,
        "cpu_ms_per_saga": cpu / sagas * 1e3,
        "commits_per_saga": None if commits is None or before is None else (commits - before) / sagas,
        "cqrs": cqrs.__file__,
    }


# -- the comparison ------------------------------------------------------------------------------


class Side:
    """A version of the code: this checkout's ``src``, or a commit's checked out under a temporary directory."""

    def __init__(self, name: str, src: Path) -> None:
        self.name = name
        self.src = src

    def run(self, args: argparse.Namespace, mode: str) -> dict[str, typing.Any]:
        command = [sys.executable, str(Path(__file__).resolve()), "--side-run", mode, "--url", args.url,
                   "--sagas", str(args.sagas), "--concurrency", str(args.concurrency),
                   "--batch-size", str(args.batch_size)]
        if args.group_commit and self.name == "current":
            command.append("--group-commit")
        return run_importing(self.src, command, f"the {self.name} side, {mode}")


def recreate_pg_database(url: str) -> None:
    from bench_saga import pg_dsn

    async def recreate() -> None:
        import asyncpg

        dsn = pg_dsn(url)
        name = dsn.rsplit("/", 1)[1]
        admin = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    asyncio.run(recreate())


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def report(runs: dict[tuple[str, str], list[dict[str, typing.Any]]], sides: list[Side], args: argparse.Namespace
           ) -> dict[str, typing.Any]:
    print(f"\n{args.sagas} sagas a run, concurrency {args.concurrency}, worker batch {args.batch_size}, "
          f"{args.rounds} round(s)" + (", current side on group commit" if args.group_commit else ""))
    print(f"{'mode':14}{'side':9}{'sagas/s (median)':>18}{'per round':>34}{'CPU ms/saga':>13}{'commits/saga':>14}")
    summary: dict[str, typing.Any] = {"sagas": args.sagas, "concurrency": args.concurrency,
                                      "batch_size": args.batch_size, "rounds": args.rounds, "modes": {}}
    for mode in args.modes:
        figures: dict[str, typing.Any] = {}
        for side in sides:
            done = runs[(mode, side.name)]
            rates = [r["sagas_per_s"] for r in done]
            commits = [r["commits_per_saga"] for r in done if r["commits_per_saga"] is not None]
            figures[side.name] = {
                "sagas_per_s": rates,
                "median_sagas_per_s": statistics.median(rates),
                "cpu_ms_per_saga": statistics.median(r["cpu_ms_per_saga"] for r in done),
                "commits_per_saga": median_or_none(commits),
            }
            f = figures[side.name]
            per_round = " ".join(f"{rate:,.0f}" for rate in rates)
            commit_text = "n/a" if f["commits_per_saga"] is None else f"{f['commits_per_saga']:.2f}"
            print(f"{mode:14}{side.name:9}{f['median_sagas_per_s']:>18,.0f}{per_round:>34}"
                  f"{f['cpu_ms_per_saga']:>13.3f}{commit_text:>14}")
        if len(sides) == 2:
            pairs = list(zip(runs[(mode, "base")], runs[(mode, "current")], strict=True))
            figures["ratios"] = [c["sagas_per_s"] / b["sagas_per_s"] for b, c in pairs]
            figures["median_ratio"] = statistics.median(figures["ratios"])
            figures["cpu_ratios"] = [b["cpu_ms_per_saga"] / c["cpu_ms_per_saga"] for b, c in pairs]
            figures["median_cpu_ratio"] = statistics.median(figures["cpu_ratios"])
        summary["modes"][mode] = figures
    if len(sides) == 2:
        print("\ncurrent ÷ base, recovered sagas per second (per round; the median is judged, target ≥ 3):")
        for mode in args.modes:
            f = summary["modes"][mode]
            verdict = "met" if f["median_ratio"] >= 3 else "MISSED"
            print(f"  {mode:14}{' '.join(f'{r:.2f}' for r in f['ratios'])}   median {f['median_ratio']:.2f}  {verdict}")
        print("base ÷ current, client CPU per recovered saga (per round, median):")
        for mode in args.modes:
            f = summary["modes"][mode]
            print(f"  {mode:14}{' '.join(f'{r:.2f}' for r in f['cpu_ratios'])}   median {f['median_cpu_ratio']:.2f}")
    return summary


def main(args: argparse.Namespace) -> int:
    if args.side_run:
        result = asyncio.run(side_run(args.url, args.side_run, args.sagas, args.concurrency, args.batch_size,
                                      args.group_commit))
        Path(args.json).write_text(json.dumps(result))
        return 0
    sides = [Side("current", ROOT / "src")]
    with contextlib.ExitStack() as stack:
        if args.base != "none":
            sides.insert(0, Side("base", stack.enter_context(checkout(args.base, "bench-recovery-"))))
        for side in sides:
            print(f"  {side.name:8} cqrs from {side.src}")
        if args.url.startswith("postgresql") and args.recreate:
            recreate_pg_database(args.url)
        runs: dict[tuple[str, str], list[dict[str, typing.Any]]] = {
            (mode, side.name): [] for mode in args.modes for side in sides
        }
        for round_number in range(args.rounds):
            for mode in args.modes:
                order = sides if round_number % 2 == 0 else sides[::-1]
                for side in order:
                    result = side.run(args, mode)
                    runs[(mode, side.name)].append(result)
                    print(f"  round {round_number + 1} {mode:13} {side.name:8} "
                          f"{result['sagas_per_s']:8,.0f} sagas/s", flush=True)
        summary = report(runs, sides, args)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default=os.environ.get("CQRS_BENCH_URL"),
                        help=f"database URL (default {DEFAULT_PG}, dropped and re-created first)")
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"commit to compare with (default {DEFAULT_BASE}); none")
    parser.add_argument("--sagas", type=int, default=None, help="sagas seeded and recovered per run (default 4000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32, help="the worker's claim batch (default 32)")
    parser.add_argument("--mode", action="append", choices=MODES, dest="modes", help="repeatable; default both")
    parser.add_argument("--group-commit", action="store_true",
                        help="the current side recovers on a group-commit storage (PostgreSQL; the base side as it is)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 200 sagas")
    parser.add_argument("--json", help="write the figures as JSON to this file")
    parser.add_argument("--side-run", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.recreate = args.url is None
    args.url = args.url or DEFAULT_PG
    args.modes = args.modes or list(MODES)
    args.sagas = args.sagas or (200 if args.quick else 4000)
    args.rounds = args.rounds or (1 if args.quick else 5)
    return args


if __name__ == "__main__":
    sys.exit(main(parse_args()))
