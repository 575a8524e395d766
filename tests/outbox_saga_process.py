"""The runner the outbox crash tests kill: ``python tests/outbox_saga_process.py --url URL --ledger FILE --kill K``.

It runs ``--sagas`` sagas of `CrashSaga` at once with the outbox on. A wrapper
around the real storage stops every saga at ``charge``'s checkpoint: before
it is sent (``before_commit``) or once it has committed (``after_commit``).
When every saga is there it prints ``at-kill-point`` and waits; the test
SIGKILLs it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import typing
import uuid

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import group_commit_switch
from cqrs.config import open_storage
from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.storage.enums import SagaStepStatus
from cqrs.saga.storage.models import Lease
from outbox_saga import CrashContext, Steps, saga_map

group_commit_switch.install()  # CQRS_TEST_GROUP_COMMIT=1 from the test: group commit on PostgreSQL

KILL_MARKER = "at-kill-point"


class StopAtCharge:
    """The real storage, except that ``charge``'s completion stops its saga (before or after it commits)."""

    def __init__(self, inner: typing.Any, sagas: int, after_commit: bool) -> None:
        self._inner = inner
        self._after = after_commit
        self._waiting = sagas
        self._never = asyncio.Event()

    def __getattr__(self, name: str) -> typing.Any:
        return getattr(self._inner, name)

    async def checkpoint(self, saga_id: uuid.UUID, lease: Lease, **kwargs: typing.Any) -> bool:
        entry = kwargs.get("entry")
        if entry is None or entry.step_name != "charge" or entry.status != SagaStepStatus.COMPLETED:
            return bool(await self._inner.checkpoint(saga_id, lease, **kwargs))
        if self._after:
            assert await self._inner.checkpoint(saga_id, lease, **kwargs)
        self._waiting -= 1
        if self._waiting == 0:
            print(KILL_MARKER, flush=True)
        await self._never.wait()
        raise AssertionError("unreachable")


async def main(args: argparse.Namespace) -> None:
    storage = await open_storage(args.url)
    runner = StopAtCharge(storage, args.sagas, args.kill == "after_commit")
    mediator = bootstrap(Steps(args.ledger), sagas_mapper=saga_map(), saga_storage=runner, outbox=True,
                         lease_seconds=60.0)
    await asyncio.gather(*(mediator.run(CrashContext(order=n)) for n in range(args.sagas)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--kill", choices=["before_commit", "after_commit"], required=True)
    parser.add_argument("--sagas", type=int, default=10)
    asyncio.run(main(parser.parse_args()))
