"""Group commit against the one-commit-per-step floor, same run, at 16, 64 and 256 concurrent sagas.

    .venv/bin/python benchmarks/bench_group_commit.py            # PostgreSQL, database cqrs_bench_group, ~2 min
    .venv/bin/python benchmarks/bench_group_commit.py --quick    # a smoke run in seconds, rough figures

The saga is `bench_saga.py`'s (three no-op steps). Rows, at each concurrency:

- group: ``SagaMediator.run`` on ``SqlAlchemySagaStorage(..., group_commit=True)``;
- engine: the same without group commit (one commit per step, as by default);
- floor: the bare asyncpg driver making one single-row commit per step (4 a saga):
  the one-commit-per-step floor the default engine runs at.

Per round the rows run back to back (their order alternating), so the ratios
``group ÷ floor`` and ``group ÷ engine`` of a round compare runs seconds apart;
the summary gives the median of the per-round ratios (throughput, and p50 and
p99 saga latency: a lower latency ratio is better). Commits per saga are
measured from ``pg_stat_database`` as in `bench_saga.py`. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import typing
import uuid

from bench_saga import Postgres, Run, Steps, _engine_saga, _fmt, _saga_map, _warm, drive

from cqrs.saga.bootstrap import bootstrap

#: Its own database (bench_saga.py uses cqrs_bench), dropped and re-created.
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/cqrs_bench_group"
LABELS = ("group", "engine", "floor")
QUICK_SAGAS = 200
#: The pool of the engine rows and of the floor (the default storage lends one connection per concurrent
#: write; the group-commit writer needs one connection however many sagas run).
POOL_SIZE = 16


class GroupPostgres(Postgres):
    """`bench_saga.Postgres` whose engine runs may use group commit."""

    group_commit = False

    def storage(self) -> typing.Any:
        from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

        return SqlAlchemySagaStorage.from_url(
            self.url, pool_size=POOL_SIZE, max_overflow=0, group_commit=self.group_commit
        )

    async def group_run(self, concurrency: int, sagas: int | None, seconds: float, *, group: bool) -> Run:
        self.group_commit = group
        storage = self.storage()
        one_saga = _engine_saga(bootstrap(Steps(), sagas_mapper=_saga_map(), saga_storage=storage))
        try:
            await _warm(concurrency, lambda: storage.get_saga(uuid.uuid4()))
            before = await self.commits()
            run = await drive("group" if group else "engine", one_saga, concurrency, sagas=sagas, seconds=seconds)
        finally:
            await storage.close()
        run.commits = await self.commits(after_close=True) - before
        return run


async def one_run(backend: GroupPostgres, label: str, level: int, sagas: int | None, seconds: float) -> Run:
    if label == "floor":
        return await backend.floor_run(level, sagas, seconds)
    return await backend.group_run(level, sagas, seconds, group=label == "group")


def _median_ratio(every: dict[tuple[str, int], list[Run]], top: str, bottom: str, level: int,
                  measure: typing.Callable[[Run], float]) -> tuple[list[float], float]:
    pairs = zip(every[(top, level)], every[(bottom, level)], strict=True)
    values = [measure(a) / measure(b) for a, b in pairs]
    return values, statistics.median(values)


def report(description: str, levels: list[int], rounds: int,
           every: dict[tuple[str, int], list[Run]]) -> dict[str, typing.Any]:
    print(f"\n{description}; median of {rounds} round(s) per row")
    header = (f"{'':7} {'conc':>4} {'sagas':>7} {'sagas/s':>9} {'p50 ms':>7} {'p99 ms':>8} "
              f"{'commits/saga':>13} {'CPU ms/saga':>12}")
    print(header)
    print("-" * len(header))
    rows = []
    for level in levels:
        for label in LABELS:
            runs = every[(label, level)]
            row = {
                "label": label, "concurrency": level, "sagas": int(statistics.median(r.sagas for r in runs)),
                "sagas_per_s": statistics.median(r.rate for r in runs),
                "p50_ms": statistics.median(r.p50_ms for r in runs),
                "p99_ms": statistics.median(r.p99_ms for r in runs),
                "commits_per_saga": statistics.median(
                    [r.commits_per_saga for r in runs if r.commits_per_saga is not None] or [float("nan")]
                ),
                "cpu_ms_per_saga": statistics.median(r.cpu_ms for r in runs),
            }
            rows.append(row)
            print(f"{label:7} {level:>4} {row['sagas']:>7} {row['sagas_per_s']:>9.1f} {row['p50_ms']:>7.2f} "
                  f"{row['p99_ms']:>8.2f} {_fmt(row['commits_per_saga']):>13} {row['cpu_ms_per_saga']:>12.3f}")
    print("\nsame-run ratios, per-round medians (latency: lower is better)")
    ratios: dict[str, dict[str, float]] = {}
    for level in levels:
        figures: dict[str, float] = {}
        for bottom in ("floor", "engine"):
            rates, rate = _median_ratio(every, "group", bottom, level, lambda r: r.rate)
            _, p50 = _median_ratio(every, "group", bottom, level, lambda r: r.p50_ms)
            _, p99 = _median_ratio(every, "group", bottom, level, lambda r: r.p99_ms)
            figures[f"throughput_vs_{bottom}"] = rate
            figures[f"p50_vs_{bottom}"] = p50
            figures[f"p99_vs_{bottom}"] = p99
            print(f"concurrency {level:>3}: group/{bottom:6} throughput {rate:5.2f} "
                  f"(rounds {' '.join(f'{r:.2f}' for r in rates)}), p50 {p50:.2f}, p99 {p99:.2f}")
        ratios[str(level)] = figures
    aims = {16: 3.0, 64: 5.0}
    print()
    for level, aim in aims.items():
        if str(level) in ratios:
            figures = ratios[str(level)]
            got, p99 = figures["throughput_vs_floor"], figures["p99_vs_engine"]
            print(f"aim at concurrency {level}: group >= {aim:.0f}x floor: {got:.2f} "
                  f"({'met' if got >= aim else 'MISSED'}); p99 no worse than without group commit: {p99:.2f} "
                  f"({'met' if p99 <= 1.0 else 'MISSED'})")
    return {"backend": description, "rows": rows, "ratios": ratios}


async def main(args: argparse.Namespace) -> int:
    levels = [int(level) for level in args.concurrency.split(",")]
    rounds = 1 if args.quick else args.rounds
    sagas = args.sagas or (QUICK_SAGAS if args.quick else None)
    url = args.url or os.environ.get("CQRS_BENCH_URL") or DEFAULT_PG
    backend = GroupPostgres(url, create_database=not (args.url or os.environ.get("CQRS_BENCH_URL")))
    description = await backend.setup()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{description}; {os.cpu_count()} CPUs (load {load:.1f}); python {sys.version.split()[0]}")
    amount = f"{sagas} sagas" if sagas else f"{args.seconds:.1f} s"
    print(f"3-step no-op saga; each run: {amount} at concurrency {levels}; pool {POOL_SIZE}"
          f"{'; --quick: one round, rough figures' if args.quick else ''}")
    overhead: dict[tuple[str, int], int | None] = {}
    for level in levels:  # commits a run makes besides its sagas (connection set-up, warm-up)
        for label in LABELS:
            overhead[(label, level)] = (await one_run(backend, label, level, 0, 0.0)).commits
    every: dict[tuple[str, int], list[Run]] = {}
    for round_number in range(rounds):
        for level in levels:
            for label in LABELS if round_number % 2 == 0 else tuple(reversed(LABELS)):
                await backend.truncate()
                run = await one_run(backend, label, level, sagas, args.seconds)
                extra = overhead[(label, level)]
                if run.commits is not None and extra is not None:
                    run.commits -= extra
                print(f"  round {round_number + 1} {label:6} c={level:<3} {run.rate:8.1f} sagas/s "
                      f"p50 {run.p50_ms:6.2f} ms p99 {run.p99_ms:6.2f} ms commits/saga {_fmt(run.commits_per_saga)}",
                      flush=True)
                every.setdefault((label, level), []).append(run)
    summary = report(description, levels, rounds, every)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="SQLAlchemy asyncpg URL of a database to use as it is (its saga tables "
                        "are emptied before every run; default: env CQRS_BENCH_URL, else a fresh cqrs_bench_group)")
    parser.add_argument("--sagas", type=int, help="sagas per run (default: as many as fit in --seconds)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run without --sagas")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the ratios are medians of per-round ratios")
    parser.add_argument("--concurrency", default="16,64,256", help="comma-separated concurrency levels")
    parser.add_argument("--quick", action="store_true",
                        help=f"one round of {QUICK_SAGAS} sagas per run: a smoke run in seconds")
    parser.add_argument("--json", metavar="FILE", help="also write the table and ratios to FILE as JSON")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
