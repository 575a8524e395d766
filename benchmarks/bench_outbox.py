"""What the outbox costs: a step's commit with its event, and a relay against a bare client, on PostgreSQL.

    .venv/bin/python benchmarks/bench_outbox.py                   # both parts, database cqrs_bench_outbox, ~2 min
    .venv/bin/python benchmarks/bench_outbox.py --part commit     # only the commit cost
    .venv/bin/python benchmarks/bench_outbox.py --part relay --broker mypkg.brokers:make_broker
    .venv/bin/python benchmarks/bench_outbox.py --quick           # a smoke run in seconds, rough figures

Part ``commit``, same-run ratios (rounds alternate the order of the rows):

- events: ``SagaMediator.run`` with ``outbox=True`` of a 3-step saga whose
  steps each emit one notification event: every checkpoint also inserts an
  outbox row (one statement still);
- plain: the same saga, its steps emitting nothing;
- direct: the events saga with the outbox off, its events sent to an
  in-memory broker after each commit (python-cqrs's way, not durable), to
  tell what emitting events costs from what writing them durably costs.

Per round: events ÷ plain (and events ÷ direct) in sagas/s at the top concurrency and in p50 saga
latency at concurrency 1 (a saga is 4 commits either way, measured from
``pg_stat_database``); the medians of those per-round ratios are the figures.

Part ``relay``: ``--messages`` outbox rows (3 a saga, as the events saga
writes them) published through one broker by

- relay: `OutboxRelay.drain` (``--relays`` relays at once, each claiming
  ``--batch`` rows a pass: the per-saga order test, the lease, the marks);
- bare: a bare asyncpg client doing the least that reads and marks the same
  rows: in one transaction ``SELECT ... ORDER BY seq LIMIT n FOR UPDATE SKIP
  LOCKED``, send each row, ``UPDATE ... SET status = 'published'`` (as many
  workers as relays);

per round relay ÷ bare in messages/s, and their median. The broker is an
in-memory one that takes every message (so the figures are the database's
and the relay's), or ``--broker package.module:name`` (a `MessageBroker` or
what makes one) so a broker adapter's cost can be measured the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import time
import typing
import uuid

import cqrs
from cqrs.events.event import NotificationEvent
from cqrs.message_brokers.protocol import Message, MessageBroker
from cqrs.outbox import OutboxRelay
from cqrs.outbox.runner import BrokerSource, open_broker
from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.map import SagaMap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_saga import POOL_SIZE, BenchContext, Run, drive, pg_dsn

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/cqrs_bench_outbox"


# -- the sagas -------------------------------------------------------------------------------------


class StepDone(NotificationEvent[dict[str, typing.Any]]):
    """The event each step of the events saga emits."""


class _Step(cqrs.SagaStepHandler[BenchContext, cqrs.Response]):
    emits = False

    def __init__(self) -> None:
        self._events: list[object] = []

    async def act(self, context: BenchContext) -> cqrs.SagaStepResult[BenchContext, cqrs.Response]:
        if self.emits:
            self._events.append(StepDone(event_name=f"{self.name}.done", topic="orders",
                                         payload={"order": context.order, "step": self.name}))
        return self._generate_step_result(cqrs.Response())


def _saga(emits: bool) -> type[cqrs.Saga[BenchContext]]:
    steps = [type(f"{name.title()}{'Event' if emits else ''}", (_Step,), {"name": name, "emits": emits})
             for name in ("one", "two", "three")]
    return type("EventsSaga" if emits else "PlainSaga", (cqrs.Saga,), {"name": "bench", "steps": steps})


SAGAS = {"events": _saga(True), "plain": _saga(False)}


class Steps:
    async def resolve(self, type_: type[typing.Any]) -> typing.Any:
        return type_()


class NullBroker(MessageBroker):
    """Takes every message (counts them): the relay benchmark's default broker."""

    def __init__(self) -> None:
        self.sent = 0

    async def send_message(self, message: Message) -> None:
        self.sent += 1


# -- the database ---------------------------------------------------------------------------------------


class Database:
    def __init__(self, url: str, *, create: bool) -> None:
        self.url, self.dsn, self.create = url, pg_dsn(url), create

    def storage(self) -> typing.Any:
        from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

        return SqlAlchemySagaStorage.from_url(self.url, pool_size=POOL_SIZE, max_overflow=0)

    async def execute(self, *statements: str) -> list[typing.Any]:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            return [await conn.fetchval(statement) for statement in statements]
        finally:
            await conn.close()

    async def setup(self) -> str:
        import asyncpg

        if self.create:
            name = self.dsn.rsplit("/", 1)[1]
            admin = await asyncpg.connect(self.dsn.rsplit("/", 1)[0] + "/postgres")
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.execute(f'CREATE DATABASE "{name}"')
            finally:
                await admin.close()
        storage = self.storage()
        await storage.create_tables()
        await storage.close()
        # Autovacuum's transactions would count in xact_commit; the tables are emptied before every run.
        *_, version, sync = await self.execute(
            *(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"
              for table in ("saga_executions", "saga_log", "saga_outbox")),
            "SHOW server_version",
            "SHOW synchronous_commit",
        )
        return f"PostgreSQL {version} (synchronous_commit={sync}) at {self.dsn.split('@')[-1]}"

    async def truncate(self) -> None:
        await self.execute("TRUNCATE saga_log, saga_executions, saga_outbox")

    async def commits(self, *, after_close: bool = False) -> int:
        """Committed transactions of the database (after a run, once its connections are gone)."""
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            for _ in range(1000 if after_close else 0):
                others = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                )
                if others == 0:
                    break
                await asyncio.sleep(0.01)
            query = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            return int(await conn.fetchval(query))
        finally:
            await conn.close()

    async def seed(self, messages: int) -> None:
        """``messages`` pending outbox rows, three a saga, shaped as the events saga writes them."""
        nonce = uuid.uuid4().hex
        message_id, saga_id = f"md5('{nonce}m' || i)::uuid", f"md5('{nonce}s' || (i / 3))::uuid"
        await self.execute(
            "INSERT INTO saga_outbox (message_id, saga_id, topic, name, payload, headers, status, attempts,"
            " created_at)"
            f" SELECT {message_id}, {saga_id}, 'orders', 'StepDone',"
            " jsonb_build_object('event_name', 'step.done', 'payload', jsonb_build_object('order', i / 3),"
            f"   'event_id', {message_id}, 'topic', 'orders'),"
            f" jsonb_build_object('message-id', {message_id}, 'saga-id', {saga_id}),"
            f" 'pending', 0, now() FROM generate_series(0, {messages - 1}) AS i ORDER BY i",
            "ANALYZE saga_outbox",
        )


# -- part 1: a step's commit with its event ------------------------------------------------------------


async def commit_run(db: Database, label: str, concurrency: int, sagas: int | None, seconds: float) -> Run:
    """``sagas`` runs (or ``seconds`` of them) of the events or the plain saga, outbox on, commits counted."""
    storage = db.storage()
    saga_map = SagaMap()
    saga_map.bind(BenchContext, SAGAS["plain" if label == "plain" else "events"])
    if label == "direct":  # outbox off: the events go to the broker after each commit, as python-cqrs sends them
        mediator = bootstrap(Steps(), NullBroker(), sagas_mapper=saga_map, saga_storage=storage)
    else:
        mediator = bootstrap(Steps(), sagas_mapper=saga_map, saga_storage=storage, outbox=True)

    async def one_saga(order: int) -> None:
        outcome = await mediator.run(BenchContext(order=order))
        if not outcome.succeeded:
            raise RuntimeError(f"benchmark saga ended {outcome.status}: {outcome.error}")

    try:
        await asyncio.gather(*(storage.get_saga(uuid.uuid4()) for _ in range(min(concurrency, POOL_SIZE))))
        before = await db.commits()
        run = await drive(label, one_saga, concurrency, sagas=sagas, seconds=seconds)
    finally:
        await storage.close()
    run.commits = await db.commits(after_close=True) - before
    return run


async def commit_part(db: Database, levels: list[int], rounds: int, sagas: int | None,
                      seconds: float) -> dict[str, typing.Any]:
    labels = ("events", "direct", "plain")
    overhead = {(label, level): (await commit_run(db, label, level, 0, 0.0)).commits
                for label in labels for level in levels}
    every: dict[tuple[str, int], list[Run]] = {}
    for number in range(rounds):
        for level in levels:
            for label in labels if number % 2 == 0 else tuple(reversed(labels)):
                await db.truncate()
                run = await commit_run(db, label, level, sagas, seconds)
                if run.commits is not None and overhead[(label, level)] is not None:
                    run.commits -= overhead[(label, level)] or 0
                every.setdefault((label, level), []).append(run)
                print(f"  round {number + 1} {label:6} c={level:<3} {run.rate:8.1f} sagas/s  p50 {run.p50_ms:6.2f} ms"
                      f"  commits/saga {run.commits_per_saga or 0:.2f}  CPU {run.cpu_ms:.3f} ms/saga", flush=True)
    print("\npart commit: a 3-step saga whose steps each emit one event (outbox on) ÷ the same saga without events;"
          "\n  direct: the events saga with the outbox off, its events sent to an in-memory broker after each commit")
    figures: dict[str, typing.Any] = {"rows": [], "ratios": {}, "ratios_to_direct": {}}
    for level in levels:
        events, direct, plain = (every[(label, level)] for label in labels)
        for label, runs in zip(labels, (events, direct, plain), strict=True):
            row = {
                "label": label, "concurrency": level,
                "sagas_per_s": statistics.median(r.rate for r in runs),
                "p50_ms": statistics.median(r.p50_ms for r in runs),
                "cpu_ms_per_saga": statistics.median(r.cpu_ms for r in runs),
                "commits_per_saga": statistics.median(r.commits_per_saga or 0.0 for r in runs),
            }
            figures["rows"].append(row)
            print(f"  {label:6} c={level:<3} median {row['sagas_per_s']:8.1f} sagas/s, p50 {row['p50_ms']:.2f} ms, "
                  f"CPU {row['cpu_ms_per_saga']:.3f} ms, commits/saga {row['commits_per_saga']:.2f}")
        for key, base, name in (("ratios", plain, "plain"), ("ratios_to_direct", direct, "direct")):
            rates = [e.rate / p.rate for e, p in zip(events, base, strict=True)]
            latencies = [e.p50_ms / p.p50_ms for e, p in zip(events, base, strict=True)]
            cpu = [e.cpu_ms / p.cpu_ms for e, p in zip(events, base, strict=True)]
            figures[key][str(level)] = {
                "throughput": statistics.median(rates), "p50_latency": statistics.median(latencies),
                "cpu": statistics.median(cpu), "per_round_throughput": rates, "per_round_p50_latency": latencies,
            }
            print(f"  c={level:<3} events/{name} per round: throughput {' '.join(f'{r:.2f}' for r in rates)} "
                  f"(median {statistics.median(rates):.2f}); p50 latency {' '.join(f'{r:.2f}' for r in latencies)} "
                  f"(median {statistics.median(latencies):.2f}); client CPU median {statistics.median(cpu):.2f}")
    return figures


# -- part 2: the relay against a bare client -------------------------------------------------------------

BARE_CLAIM = """SELECT seq, message_id, topic, name, payload::text, headers::text FROM saga_outbox
    WHERE status = 'pending' ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"""
BARE_MARK = "UPDATE saga_outbox SET status = 'published', published_at = now() WHERE seq = ANY($1::bigint[])"


@dataclasses.dataclass
class Pass:
    label: str
    workers: int
    messages: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


async def relay_run(db: Database, broker: MessageBroker, workers: int, batch: int) -> Pass:
    storage = db.storage()
    try:
        await asyncio.gather(*(storage.get_saga(uuid.uuid4()) for _ in range(min(workers, POOL_SIZE))))
        relays = [OutboxRelay(storage, broker, batch_size=batch) for _ in range(workers)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        claimed = sum(await asyncio.gather(*(relay.drain() for relay in relays)))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        # A relay stops when a pass claims nothing; rows other relays held may still be waiting.
        claimed += sum(await asyncio.gather(*(relay.drain() for relay in relays)))
        if await storage.outbox_backlog():
            raise RuntimeError("the relays left rows unpublished")
    finally:
        await storage.close()
    return Pass("relay", workers, claimed, wall, cpu)


async def bare_run(db: Database, broker: MessageBroker, workers: int, batch: int) -> Pass:
    import asyncpg

    pool = await asyncpg.create_pool(db.dsn, min_size=workers, max_size=workers)

    async def worker() -> int:
        done = 0
        while True:
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(BARE_CLAIM, batch)
                if not rows:
                    return done
                await asyncio.gather(*(
                    broker.send_message(Message(message_name=r["name"], topic=r["topic"],
                                                payload=json.loads(r["payload"]), message_id=r["message_id"],
                                                headers=json.loads(r["headers"])))
                    for r in rows
                ))
                await conn.execute(BARE_MARK, [r["seq"] for r in rows])
                done += len(rows)

    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        published = sum(await asyncio.gather(*(worker() for _ in range(workers))))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        await pool.close()
    return Pass("bare", workers, published, wall, cpu)


async def relay_part(db: Database, broker_source: BrokerSource | None, levels: list[int], rounds: int,
                     messages: int, batch: int) -> dict[str, typing.Any]:
    """Relay and bare client through the broker ``broker_source`` gives (a broker adapter's benchmark calls this
    with its own), ``rounds`` times per number of workers in ``levels``."""
    every: dict[tuple[str, int], list[Pass]] = {}
    async with open_broker(broker_source or NullBroker) as broker:
        for number in range(rounds):
            for workers in levels:
                for label in ("relay", "bare") if number % 2 == 0 else ("bare", "relay"):
                    await db.truncate()
                    await db.seed(messages)
                    run = await (relay_run if label == "relay" else bare_run)(db, broker, workers, batch)
                    if run.messages != messages:
                        raise RuntimeError(f"{label} published {run.messages} of {messages} messages")
                    every.setdefault((label, workers), []).append(run)
                    print(f"  round {number + 1} {label:5} workers={workers:<2} {run.rate:9.1f} messages/s  "
                          f"CPU {run.cpu_seconds / run.messages * 1e6:.1f} µs/message", flush=True)
    name = "an in-memory broker" if broker_source is None else (
        broker_source if isinstance(broker_source, str) else type(broker_source).__name__
    )
    print(f"\npart relay: {messages} messages (3 a saga), batches of {batch}, through {name}; relay ÷ bare client")
    figures: dict[str, typing.Any] = {"broker": name, "messages": messages, "batch": batch, "rows": [], "ratios": {}}
    for workers in levels:
        relay, bare = every[("relay", workers)], every[("bare", workers)]
        rates = [r.rate / b.rate for r, b in zip(relay, bare, strict=True)]
        for label, runs in (("relay", relay), ("bare", bare)):
            row = {"label": label, "workers": workers,
                   "messages_per_s": statistics.median(r.rate for r in runs),
                   "cpu_us_per_message": statistics.median(r.cpu_seconds / r.messages * 1e6 for r in runs)}
            figures["rows"].append(row)
            print(f"  {label:5} workers={workers:<2} median {row['messages_per_s']:9.1f} messages/s, "
                  f"client CPU {row['cpu_us_per_message']:.1f} µs/message")
        figures["ratios"][str(workers)] = {"throughput": statistics.median(rates), "per_round": rates}
        print(f"  workers={workers:<2} relay/bare per round: {' '.join(f'{r:.2f}' for r in rates)} "
              f"(median {statistics.median(rates):.2f})")
    return figures


# -- main ----------------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    levels = [int(level) for level in args.concurrency.split(",")]
    relays = [int(n) for n in args.relays.split(",")]
    rounds = 1 if args.quick else args.rounds
    sagas = args.sagas or (100 if args.quick else None)
    messages = 300 if args.quick else args.messages
    url = args.url or os.environ.get("CQRS_BENCH_URL") or DEFAULT_PG
    db = Database(url, create=not (args.url or os.environ.get("CQRS_BENCH_URL")))
    description = await db.setup()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{description}; {os.cpu_count()} CPUs (load {load:.1f}); python {sys.version.split()[0]}")
    summary: dict[str, typing.Any] = {"backend": description}
    if args.part in ("commit", "both"):
        amount = f"{sagas} sagas" if sagas else f"{args.seconds:.1f} s"
        print(f"part commit: each run {amount} at concurrency {levels}, {rounds} round(s)")
        summary["commit"] = await commit_part(db, levels, rounds, sagas, args.seconds)
    if args.part in ("relay", "both"):
        print(f"\npart relay: {messages} messages a run, workers {relays}, {rounds} round(s)")
        summary["relay"] = await relay_part(db, args.broker, relays, rounds, messages, args.batch)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="SQLAlchemy asyncpg URL of a database to use as it is (its saga and outbox "
                        "tables are emptied; default: env CQRS_BENCH_URL, else a fresh database cqrs_bench_outbox)")
    parser.add_argument("--part", choices=("commit", "relay", "both"), default="both")
    parser.add_argument("--sagas", type=int, help="sagas per commit run (default: as many as fit in --seconds)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each commit run without --sagas")
    parser.add_argument("--concurrency", default="1,16", help="commit part: comma-separated concurrency levels")
    parser.add_argument("--messages", type=int, default=9000, help="relay part: messages a run (default 9000)")
    parser.add_argument("--relays", default="1,4", help="relay part: relays (and bare workers) at once")
    parser.add_argument("--batch", type=int, default=100, help="relay part: rows claimed a pass (default 100)")
    parser.add_argument("--broker", help="relay part: package.module:name of a MessageBroker or of what makes one "
                        "(default: an in-memory broker that takes every message)")
    parser.add_argument("--rounds", type=int, default=5, help="runs per row; the ratios are per-round medians")
    parser.add_argument("--quick", action="store_true", help="one round of 100 sagas and 300 messages: a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
