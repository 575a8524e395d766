"""A process that runs one ShopSaga on the storage at argv[1] (``python -m tests.ops_runner URL ORDER``).

With ``CQRS_TEST_HOLD=charge`` it prints ``HOLDING <order>`` inside charge and waits there, to be SIGKILLed.
"""

from __future__ import annotations

import asyncio
import sys

import di
from tests import ops_sagas

from cqrs.config import open_storage
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.settings import EngineSettings


async def main(url: str, order: str) -> None:
    storage = await open_storage(url)
    settings = EngineSettings(lease_seconds=60)
    mediator = SagaMediator(ops_sagas.saga_map, di.Container(), storage=storage, settings=settings)
    outcome = await mediator.run(ops_sagas.ShopContext(order_id=order))
    print(f"ENDED {outcome.saga_id} {outcome.status.value}", flush=True)
    await storage.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
