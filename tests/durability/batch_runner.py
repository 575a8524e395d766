"""The subprocess of the group-commit crash test: many sagas on one group-commit storage, killed mid-batch.

    python tests/durability/batch_runner.py --url URL --ledger FILE --sagas N

Runs N `OrderSaga`s at once on ``SqlAlchemySagaStorage(..., group_commit=True)``.
Every step appends ``act`` to the ledger (fsynced) when it runs, and a hook
appends ``acked`` when the engine reports the step completed (``step_completed``:
after the batch holding its checkpoint committed). Once every saga is at the
start of ``ship`` (``reserve`` and ``charge`` acknowledged) it prints
``at-ship`` and waits for a line on stdin, then lets every saga go on: their
``ship`` checkpoints go out in batches, which the test holds with a lock and
SIGKILLs this process under.
"""

from __future__ import annotations

import asyncio
import os
import sys
import typing
import uuid

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.hooks import SagaHook
from cqrs.saga.map import SagaMap
from durability.db import open_storage
from durability.saga import FileLedger, Hooks, OrderContext, OrderSaga, StepEnv

AT_SHIP = "at-ship"


class Acks(SagaHook):
    """Writes ``acked <saga> <step>`` once the engine reports a step's completion committed."""

    def __init__(self, ledger: FileLedger) -> None:
        self.ledger = ledger

    async def step_completed(self, run: typing.Any, step: str, result: object, events: typing.Sequence[object]) -> None:
        await self.ledger.record("acked", run.saga_id, step)


class HoldAtShip(Hooks):
    """Every saga waits at the start of ``ship`` until all are there and the test said go."""

    def __init__(self, sagas: int) -> None:
        self.sagas = sagas
        self.arrived = 0
        self.go = asyncio.Event()

    async def at(self, point: str, saga_id: uuid.UUID, step: str) -> None:
        if point != "before_act" or step != "ship":
            return
        self.arrived += 1
        if self.arrived == self.sagas:
            print(AT_SHIP, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            self.go.set()
        await self.go.wait()


async def main(url: str, ledger_path: str, sagas: int) -> int:
    storage = await open_storage(url, group_commit=True)
    assert storage.group_commit
    ledger = FileLedger(ledger_path, tag="runner")
    mapping = SagaMap()
    mapping.bind(OrderContext, OrderSaga)
    mediator = bootstrap(
        StepEnv(ledger, HoldAtShip(sagas)), sagas_mapper=mapping, saga_storage=storage, hooks=[Acks(ledger)]
    )
    await asyncio.gather(*(mediator.run(OrderContext(order=order)) for order in range(sagas)))
    await storage.close()
    print("every saga finished: the test did not kill this process", file=sys.stderr)
    return 3


if __name__ == "__main__":
    arguments = dict(zip(sys.argv[1::2], sys.argv[2::2], strict=True))
    sys.exit(asyncio.run(main(arguments["--url"], arguments["--ledger"], int(arguments["--sagas"]))))
