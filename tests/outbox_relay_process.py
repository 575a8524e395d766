"""A relay process for the racing tests: ``python tests/outbox_relay_process.py --url URL --tag NAME [...]``.

Prints ``ready`` once its storage is open, waits for a line on stdin (so a
test starts every relay at once), then relays through ``--broker`` (default
`TcpBroker`, at ``$CQRS_TEST_BROKER``) until it reads a second line, and
prints a JSON summary of what it did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cqrs.config import open_storage
from cqrs.outbox import run_relay


async def main(args: argparse.Namespace) -> None:
    storage = await open_storage(args.url, create_tables=False)
    try:
        await storage.outbox_backlog()  # connected
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        stop = asyncio.Event()
        relay_task = asyncio.ensure_future(
            run_relay(storage, args.broker, stop=stop, batch_size=args.batch_size, lease_seconds=60.0,
                      poll_interval=0.02, owner=f"relay-{args.tag}")
        )
        await asyncio.to_thread(sys.stdin.readline)
        stop.set()
        relay = await relay_task
    finally:
        await storage.close()
    print(json.dumps({"owner": relay.owner, "published": relay.published, "failed": relay.failed,
                      "parked": relay.parked}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--broker", default="outbox_broker:TcpBroker")
    asyncio.run(main(parser.parse_args()))
