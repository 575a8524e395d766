"""The subprocess the durability tests start: a saga runner to be killed, or a recoverer.

    python tests/durability/runner.py crash --url URL --ledger FILE --kill-point POINT --sagas N
    python tests/durability/runner.py recover --url URL (--ledger FILE | --pg-ledger) --tag NAME [--by-id]

``crash`` runs one saga to completion (a bystander), then N sagas of
`OrderSaga` at once. When all N are at the kill point it prints
``at-kill-point`` on stdout and waits; the test SIGKILLs it when it reads that
line (nothing is timed, nothing races). The kill points:

- ``before_act``: at the start of ``charge``'s act, before its ledger line;
- ``in_act``: inside ``charge``'s act, after its ledger line, before it returns;
- ``before_commit``: ``charge``'s act returned and the engine asked the storage
  to record its completion (a wrapper around the real storage stops first);
- ``in_compensation``: ``ship`` failed, the saga is compensating, and the
  compensation of ``charge`` wrote its ledger line.

``recover`` prints ``ready`` once connected, waits for a line on stdin (so a
test can start many at once), then recovers and prints a JSON summary. By
default it runs ``RecoveryWorker.run_once`` until a pass claims nothing; with
``--by-id`` it calls ``recover_saga`` on every stored `OrderSaga`, in the
order they were created, counting how each call ended.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import typing
import uuid

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.map import SagaMap
from cqrs.saga.storage.enums import SagaStepStatus
from cqrs.saga.storage.models import Lease
from durability.db import open_storage, pg_dsn
from durability.saga import (
    Barrier,
    FileLedger,
    Hooks,
    KillAt,
    OrderContext,
    OrderSaga,
    PgLedger,
    StepEnv,
    announce_kill_point,
)

#: kill point -> (hook point, step); ``before_commit`` is handled by the storage wrapper.
KILL_POINTS = {
    "before_act": ("before_act", "charge"),
    "in_act": ("after_act", "charge"),
    "before_commit": ("checkpoint", "charge"),
    "in_compensation": ("after_compensate", "charge"),
}


class KillBeforeCommit:
    """A real storage whose ``checkpoint`` stops (to be killed) instead of recording ``step``'s completion.

    Every other call goes straight to the wrapped storage. The kill point is
    announced once all ``armed`` sagas are at this point.
    """

    def __init__(self, inner: typing.Any, step: str, armed: typing.Collection[uuid.UUID]) -> None:
        self._inner = inner
        self._step = step
        self._armed = set(armed)
        self._barrier = Barrier(len(self._armed), announce_kill_point)

    def __getattr__(self, name: str) -> typing.Any:
        return getattr(self._inner, name)

    async def checkpoint(self, saga_id: uuid.UUID, lease: Lease, **kwargs: typing.Any) -> bool:
        entry = kwargs.get("entry")
        if (
            saga_id in self._armed
            and entry is not None
            and entry.action == "act"
            and entry.step_name == self._step
            and entry.status == SagaStepStatus.COMPLETED
        ):
            await self._barrier.arrive()
        return bool(await self._inner.checkpoint(saga_id, lease, **kwargs))


def saga_map() -> SagaMap:
    mapping = SagaMap()
    mapping.bind(OrderContext, OrderSaga)
    return mapping


async def crash(args: argparse.Namespace) -> int:
    storage = await open_storage(args.url)
    armed = [uuid.uuid4() for _ in range(args.sagas)]
    point, step = KILL_POINTS[args.kill_point]
    hooks: Hooks = Hooks()
    runner_storage: typing.Any = storage
    if args.kill_point == "before_commit":
        runner_storage = KillBeforeCommit(storage, step, armed)
    else:
        hooks = KillAt(point, step, armed)
    env = StepEnv(FileLedger(args.ledger, tag="runner"), hooks)
    mediator = bootstrap(env, sagas_mapper=saga_map(), saga_storage=runner_storage, lease_seconds=args.lease_seconds)
    for order in range(args.bystanders):
        outcome = await mediator.run(OrderContext(order=-1 - order))
        assert outcome.succeeded, outcome
    fail_at = "ship" if args.kill_point == "in_compensation" else None
    await asyncio.gather(
        *(mediator.run(OrderContext(order=order, fail_at=fail_at), saga_id=saga_id)
          for order, saga_id in enumerate(armed))
    )
    await storage.close()
    print(f"kill point {args.kill_point} was never reached", file=sys.stderr)
    return 3


async def recover(args: argparse.Namespace) -> int:
    from cqrs.saga.recovery import RecoveryWorker
    from cqrs.saga.settings import EngineSettings

    storage = await open_storage(args.url, create=False)
    pool = None
    if args.pg_ledger:
        import asyncpg

        pool = await asyncpg.create_pool(pg_dsn(args.url), min_size=1, max_size=args.concurrency)
        ledger: typing.Any = PgLedger(pool, args.tag)
    else:
        ledger = FileLedger(args.ledger, tag=args.tag)
    env = StepEnv(ledger)
    try:
        await storage.get_saga(uuid.uuid4())  # connected before we say so
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if args.by_id:
            summary = await recover_each(storage, env, args)
        else:
            worker = RecoveryWorker(
                [OrderSaga],
                env,
                storage,
                settings=EngineSettings(lease_seconds=args.lease_seconds),
                batch_size=args.batch_size,
                concurrency=args.concurrency,
            )
            passes = claimed = 0
            while passes < args.max_passes:
                passes += 1
                count = await worker.run_once()
                claimed += count
                if count == 0:
                    break
            else:
                print(f"still claiming after {passes} passes", file=sys.stderr)
                return 4
            summary = {"passes": passes, "claimed": claimed, "outcomes": worker.recovered}
        print(json.dumps({"tag": args.tag, **summary}), flush=True)
        return 0
    finally:
        if pool is not None:
            await pool.close()
        await storage.close()


async def recover_each(storage: typing.Any, env: StepEnv, args: argparse.Namespace) -> dict[str, typing.Any]:
    """``recover_saga`` on every stored saga, oldest first; counts ``ok`` and each exception type."""
    from cqrs.saga.recovery import recover_saga

    records = await storage.list_sagas(name=OrderSaga.name, limit=100_000)
    outcomes: collections.Counter[str] = collections.Counter()
    for record in records:
        try:
            await recover_saga(OrderSaga, record.saga_id, OrderContext, env, storage,
                               lease_seconds=args.lease_seconds)
        except Exception as error:
            outcomes[type(error).__name__] += 1
        else:
            outcomes["ok"] += 1
    return {"sagas": len(records), "outcomes": dict(outcomes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    crash_p = sub.add_parser("crash")
    crash_p.add_argument("--url", required=True)
    crash_p.add_argument("--ledger", required=True)
    crash_p.add_argument("--kill-point", required=True, choices=sorted(KILL_POINTS))
    crash_p.add_argument("--sagas", type=int, default=5)
    crash_p.add_argument("--bystanders", type=int, default=1)
    crash_p.add_argument("--lease-seconds", type=float, default=60.0)
    recover_p = sub.add_parser("recover")
    recover_p.add_argument("--url", required=True)
    where = recover_p.add_mutually_exclusive_group(required=True)
    where.add_argument("--ledger")
    where.add_argument("--pg-ledger", action="store_true")
    recover_p.add_argument("--tag", required=True)
    recover_p.add_argument("--batch-size", type=int, default=10)
    recover_p.add_argument("--concurrency", type=int, default=4)
    recover_p.add_argument("--max-passes", type=int, default=200)
    recover_p.add_argument("--lease-seconds", type=float, default=60.0)
    recover_p.add_argument("--by-id", action="store_true", help="recover_saga on every saga, not RecoveryWorker")
    args = parser.parse_args(argv)
    return asyncio.run(crash(args) if args.mode == "crash" else recover(args))


if __name__ == "__main__":
    sys.exit(main())
