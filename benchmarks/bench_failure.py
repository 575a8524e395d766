"""The failure path: failed-and-compensated sagas per second, compensations recorded together or one commit each.

    .venv/bin/python benchmarks/bench_failure.py              # PostgreSQL, database cqrs_bench_failure, ~40 s
    .venv/bin/python benchmarks/bench_failure.py --quick      # one round of 100 sagas: a smoke run, rough figures
    .venv/bin/python benchmarks/bench_failure.py --sqlite     # SQLite file in a temporary directory

A saga of three no-op steps whose third step fails, so the first two are
compensated. Two rows, in alternating rounds of the same run:

- each: ``compensation_commits="each"``, one commit per compensation: start,
  two steps, the failure with the record that compensation began, two
  compensations (6 commits a saga; what every release before this one did);
- together: the default, the compensations recorded in one commit with the
  final status (5 commits a saga).

The ratio (together / each sagas per second) is the median of the per-round
ratios; the aim (issue 17) is at least 1.2 at concurrency 16. Commits per
saga are measured on PostgreSQL (pg_stat_database.xact_commit), not assumed.

With ``--base COMMIT`` (PostgreSQL) a third row, base, runs the same saga on
that commit's ``src`` (checked out with ``git worktree`` under a temporary
directory, removed at the end), as it was: ad92db3 is the code the aim's
"today's" meant. Every run is then a subprocess of its own, the order of the
rows rotating from round to round, and together / base is printed too.
The base runs this script's saga and set-up (``bench_saga``'s, on tables this
checkout's ``create_tables`` made): a base whose public API or schema differ
from this one's fails or is not measured like for like.

    .venv/bin/python benchmarks/bench_failure.py --base ad92db3   # ~1 min
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import pathlib
import statistics
import sys
import tempfile
import typing
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_saga  # the saga's steps, the driver and the database set-up are shared
from _base_code import checkout, run_importing

import cqrs
from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.map import SagaMap
from cqrs.saga.storage.enums import SagaStatus

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/cqrs_bench_failure"
AIM = 1.2
MODES = ("each", "together")
#: The row of ``--base``: the base commit's code with its own defaults.
BASE = "base"
HERE = pathlib.Path(__file__).resolve().parent


class Declined(Exception):
    """The third step's failure."""


class FailingStep(cqrs.SagaStepHandler[bench_saga.BenchContext, cqrs.Response]):
    name = "three"

    async def act(
        self, context: bench_saga.BenchContext
    ) -> cqrs.SagaStepResult[bench_saga.BenchContext, cqrs.Response]:
        raise Declined("declined")


class FailingSaga(cqrs.Saga[bench_saga.BenchContext]):
    name = "failing"
    steps = [bench_saga.StepOne, bench_saga.StepTwo, FailingStep]


def _saga_map() -> SagaMap:
    saga_map = SagaMap()
    saga_map.bind(bench_saga.BenchContext, FailingSaga)
    return saga_map


def _one_saga(mediator: typing.Any) -> typing.Callable[[int], typing.Awaitable[None]]:
    async def run(order: int) -> None:
        outcome = await mediator.run(bench_saga.BenchContext(order=order))
        if outcome.status is not SagaStatus.FAILED:
            raise AssertionError(f"the saga was meant to fail and be compensated, it ended {outcome.status}")

    return run


async def one_run(
    backend: bench_saga.Postgres | bench_saga.Sqlite, mode: str, concurrency: int, sagas: int | None, seconds: float
) -> bench_saga.Run:
    storage = backend.storage()
    options = {} if mode == BASE else {"compensation_commits": mode}  # the base may not know the option
    mediator = bootstrap(
        bench_saga.Steps(), sagas_mapper=_saga_map(), saga_storage=storage, telemetry=False, **options,  # type: ignore[arg-type]
    )
    postgres = isinstance(backend, bench_saga.Postgres)
    try:
        await bench_saga._warm(concurrency, lambda: storage.get_saga(uuid.uuid4()))
        before = await backend.commits() if postgres else 0
        run = await bench_saga.drive(mode, _one_saga(mediator), concurrency, sagas=sagas, seconds=seconds)
    finally:
        await storage.close()
    if postgres:
        run.commits = await backend.commits(after_close=True) - before
    await backend.truncate()
    return run


def run_elsewhere(src: pathlib.Path, args: argparse.Namespace, url: str, mode: str, level: int,
                  sagas: int | None) -> bench_saga.Run:
    """One run of ``mode`` in a subprocess importing ``cqrs`` from ``src``."""
    command = [sys.executable, str(HERE / "bench_failure.py"), "--side-run", mode, "--url", url,
               "--concurrency", str(level), "--seconds", str(args.seconds)]
    if sagas is not None:
        command += ["--sagas", str(sagas)]
    return bench_saga.Run(**run_importing(src, command, f"the {mode} run from {src}"))


async def side_run(args: argparse.Namespace) -> int:
    """``--side-run MODE``: one run on the tables the parent made; its figures as JSON."""
    logging.getLogger("cqrs").setLevel(logging.ERROR)
    backend = bench_saga.Postgres(args.url, create_database=False)
    run = await one_run(backend, args.side_run, args.concurrency[0], args.sagas, args.seconds)
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump({**dataclasses.asdict(run), "cqrs": cqrs.__file__}, handle)
    return 0


async def main(args: argparse.Namespace) -> int:
    if args.side_run:
        return await side_run(args)
    if args.base is None:
        return await compare(args, None)
    if args.sqlite:
        raise SystemExit("--base runs on PostgreSQL only")
    with checkout(args.base, "bench-failure-") as base_src:
        return await compare(args, base_src)


async def compare(args: argparse.Namespace, base_src: pathlib.Path | None) -> int:
    """The rounds and the report; with ``base_src``, the base row too, every run a subprocess."""
    backend: bench_saga.Postgres | bench_saga.Sqlite
    if args.sqlite:
        folder = tempfile.mkdtemp(prefix="cqrs-bench-failure-")
        backend = bench_saga.Sqlite(os.path.join(folder, "sagas.sqlite3"))
    else:
        url = args.url or os.environ.get("CQRS_BENCH_URL")
        backend = bench_saga.Postgres(url or DEFAULT_PG, create_database=url is None)
    logging.getLogger("cqrs").setLevel(logging.ERROR)  # every saga here fails on purpose: no warning each
    print(await backend.setup())
    rounds = 1 if args.quick else args.rounds
    seconds = args.seconds
    sagas = args.sagas or (100 if args.quick else None)
    results: dict[str, typing.Any] = {"concurrency": {}}
    modes = MODES if base_src is None else (BASE, *MODES)
    if base_src is not None:
        print(f"base: cqrs from {base_src} ({args.base}); every run a subprocess")
    for level in args.concurrency:
        every: dict[str, list[bench_saga.Run]] = {mode: [] for mode in modes}
        ratios, base_ratios = [], []
        for round_number in range(rounds):
            if base_src is None:
                for mode in modes:
                    every[mode].append(await one_run(backend, mode, level, sagas, seconds))
            else:
                shift = round_number % len(modes)
                for mode in modes[shift:] + modes[:shift]:
                    src = base_src if mode == BASE else HERE.parent / "src"
                    every[mode].append(run_elsewhere(src, args, backend.url, mode, level, sagas))
                base_ratios.append(every["together"][-1].rate / every[BASE][-1].rate)
            ratios.append(every["together"][-1].rate / every["each"][-1].rate)
        print(f"\nconcurrency {level}: {rounds} round(s)")
        print(f"{'mode':<10} {'failed sagas/s':>15} {'p50 ms':>8} {'p99 ms':>8} {'commits/saga':>13} "
              f"{'CPU ms/saga':>12}")
        row: dict[str, typing.Any] = {}
        for mode in modes:
            best = max(every[mode], key=lambda run: run.rate)
            commits = best.commits_per_saga
            print(f"{mode:<10} {best.rate:>15.0f} {best.p50_ms:>8.2f} {best.p99_ms:>8.2f} "
                  f"{'-' if commits is None else f'{commits:.2f}':>13} {best.cpu_ms:>12.3f}")
            row[mode] = {"rate": best.rate, "p50_ms": best.p50_ms, "p99_ms": best.p99_ms, "commits_per_saga": commits,
                         "cpu_ms_per_saga": best.cpu_ms, "rounds": [run.rate for run in every[mode]]}
        ratio = statistics.median(ratios)
        verdict = "meets" if ratio >= AIM else "below"
        print(f"together / each: {ratio:.2f} (median of per-round ratios; aim {AIM}: {verdict})")
        row["ratio"] = ratio
        if base_ratios:
            base_ratio = statistics.median(base_ratios)
            verdict = "meets" if base_ratio >= AIM else "below"
            print(f"together / base: {base_ratio:.2f} (rounds {' '.join(f'{r:.2f}' for r in base_ratios)}; "
                  f"median; aim {AIM}: {verdict})")
            row["base_ratio"], row["base_ratios"] = base_ratio, base_ratios
        results["concurrency"][str(level)] = row
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="PostgreSQL URL to use as it is (its saga tables are emptied after each run)")
    parser.add_argument("--sqlite", action="store_true", help="SQLite in a temporary file instead of PostgreSQL")
    parser.add_argument("--concurrency", type=lambda text: [int(x) for x in text.split(",")], default=[16])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run (default 3)")
    parser.add_argument("--sagas", type=int, default=None, help="a fixed number of sagas per run instead")
    parser.add_argument("--quick", action="store_true", help="one round of 100 sagas per mode")
    parser.add_argument("--json", help="also write the figures as JSON to this file")
    parser.add_argument("--base", help="also run a base commit's code (PostgreSQL; for example ad92db3)")
    parser.add_argument("--side-run", choices=(BASE, *MODES), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
