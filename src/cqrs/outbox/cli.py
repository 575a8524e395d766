"""The relay's command line: ``python -m cqrs.outbox --url URL --broker package.module:name``.

Another command line (a ``relay`` subcommand, a Django management command)
reuses the same options: `add_relay_arguments` adds them to an
``argparse`` parser, and `relay_from_arguments` runs the relay they describe.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import typing

from cqrs.outbox.relay import DEFAULT_RELAY_RETRY, OutboxRelay
from cqrs.outbox.runner import run_relay
from cqrs.saga.retry import RetryPolicy

__all__ = ["add_relay_arguments", "main", "relay_from_arguments"]

logger = logging.getLogger("cqrs.outbox")


def add_relay_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the relay's options to ``parser`` (and return it)."""
    retry = DEFAULT_RELAY_RETRY
    parser.add_argument("--url", default=os.environ.get("CQRS_SAGA_STORAGE_URL"),
                        help="the saga storage URL (default: $CQRS_SAGA_STORAGE_URL)")
    parser.add_argument("--broker", required=True,
                        help="package.module:name of a MessageBroker, or of what makes one (called with no arguments)")
    parser.add_argument("--batch-size", type=int, default=100, help="rows claimed per pass (default 100)")
    parser.add_argument("--lease-seconds", type=float, default=30.0, help="how long a claim lasts (default 30)")
    parser.add_argument("--poll-interval", type=float, default=1.0,
                        help="seconds between passes when nothing is due (default 1)")
    parser.add_argument("--publish-timeout", type=float, default=None,
                        help="seconds a publish may take before it counts as failed (default: half the lease)")
    parser.add_argument("--retry-attempts", type=int, default=retry.attempts,
                        help=f"tries before a message is parked (default {retry.attempts})")
    parser.add_argument("--retry-delay", type=float, default=retry.delay,
                        help=f"seconds before the first retry (default {retry.delay:g})")
    parser.add_argument("--retry-backoff", type=float, default=retry.backoff,
                        help=f"factor between retries (default {retry.backoff:g})")
    parser.add_argument("--retry-max-delay", type=float, default=retry.max_delay,
                        help=f"longest wait between retries (default {retry.max_delay:g})")
    parser.add_argument("--owner", default=None, help="the name of this relay's claims (default: host, pid, random)")
    parser.add_argument("--once", action="store_true", help="publish what is due, then exit")
    parser.add_argument("--create-tables", action="store_true", help="create missing tables first")
    return parser


async def relay_from_arguments(arguments: argparse.Namespace, *, handle_signals: bool = True) -> OutboxRelay:
    """Run the relay ``arguments`` (parsed with `add_relay_arguments`' options) describe, until SIGTERM or
    SIGINT (or, with ``--once``, until nothing is due); returns it."""
    if not arguments.url:
        raise SystemExit("--url is required (or set CQRS_SAGA_STORAGE_URL)")
    retry = RetryPolicy(
        attempts=arguments.retry_attempts,
        delay=arguments.retry_delay,
        backoff=arguments.retry_backoff,
        max_delay=arguments.retry_max_delay,
    )
    return await run_relay(
        arguments.url,
        arguments.broker,
        once=arguments.once,
        create_tables=arguments.create_tables,
        handle_signals=handle_signals,
        batch_size=arguments.batch_size,
        lease_seconds=arguments.lease_seconds,
        poll_interval=arguments.poll_interval,
        publish_timeout=arguments.publish_timeout,
        retry=retry,
        owner=arguments.owner,
    )


def main(argv: typing.Sequence[str] | None = None) -> int:
    """``python -m cqrs.outbox``: parse ``argv``, run the relay, log its counts when it stops."""
    parser = add_relay_arguments(
        argparse.ArgumentParser(prog="python -m cqrs.outbox", description="Publish the saga outbox to a broker.")
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=arguments.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    relay = asyncio.run(relay_from_arguments(arguments))
    logger.info("Outbox relay %s stopped: %d published, %d failed (retried), %d parked",
                relay.owner, relay.published, relay.failed, relay.parked)
    return 0
