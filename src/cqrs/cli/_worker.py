"""``cqrs-saga worker``: the recovery worker, its log lines, and a graceful stop on SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import typing

from cqrs.cli._session import open_mediator
from cqrs.saga.hooks import RunInfo, SagaHook
from cqrs.saga.settings import EngineSettings
from cqrs.saga.storage.enums import SagaStatus

__all__ = ["configure_logging", "run_outbox_relay", "run_worker"]

logger = logging.getLogger("cqrs.cli.worker")


class WorkerLog(SagaHook):
    """One INFO line when this worker picks a saga up, and one when the saga ends."""

    def saga_resumed(self, run: RunInfo) -> None:
        logger.info("picked up saga %s (%s, %s)", run.saga_id, run.saga_name, run.status.value)

    def saga_finished(self, run: RunInfo, status: SagaStatus, error: str | None) -> None:
        logger.info("saga %s (%s) ended %s%s", run.saga_id, run.saga_name, status.value, f": {error}" if error else "")


def configure_logging(level: str) -> None:
    """Send the library's records (the ``cqrs`` logger tree) at ``level`` and up to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger("cqrs")
    root.addHandler(handler)
    root.setLevel(level.upper())


async def run_worker(
    app: str,
    url: str | None,
    *,
    concurrency: int,
    batch_size: int,
    poll_interval: float,
    max_attempts: int,
    lease_seconds: float,
    shutdown_grace: float,
    once: bool,
    outbox: bool = False,
) -> int:
    """Recover sagas until SIGTERM/SIGINT (or one pass with ``once``); in-flight sagas get ``shutdown_grace``.

    ``outbox``: the steps it runs write their notification events to the outbox (an app whose mediator
    uses the outbox needs its worker to do the same, or recovered steps' events skip it).
    """
    settings = EngineSettings(lease_seconds=lease_seconds)
    async with open_mediator(app, url, settings=settings, hooks=[WorkerLog()], outbox=outbox) as mediator:
        worker = mediator.recovery_worker(
            concurrency=concurrency, batch_size=batch_size, poll_interval=poll_interval,
            max_attempts=max_attempts, shutdown_grace=shutdown_grace,
        )
        names = ", ".join(sorted(saga.name for saga in mediator.saga_map.sagas()))
        logger.info("worker started: sagas %s; concurrency %d, polling every %gs", names, concurrency, poll_interval)
        if once:
            claimed = await worker.run_once()
            logger.info("one pass done: %d saga(s) claimed %s", claimed, _tally(worker.recovered))
            return 0

        def stopping(sig: signal.Signals) -> None:
            logger.info(
                "%s received: finishing the sagas in flight (up to %gs), then stopping", sig.name, shutdown_grace
            )

        worker.install_signal_handlers(on_signal=stopping)
        await worker.run()
        logger.info("worker stopped %s", _tally(worker.recovered))
    return 0


def _tally(recovered: typing.Mapping[str, int]) -> str:
    if not recovered:
        return "(nothing recovered)"
    return "(" + ", ".join(f"{count} {outcome}" for outcome, count in sorted(recovered.items())) + ")"


async def run_outbox_relay(url: str | None, broker: str, *, once: bool, **options: typing.Any) -> int:
    """Publish the outbox of ``url``'s storage through ``broker`` (``module:object``) until SIGTERM/SIGINT
    (or until nothing is due, with ``once``); ``options`` go to `cqrs.outbox.OutboxRelay`."""
    from cqrs.cli._session import resolve_url
    from cqrs.outbox.runner import run_relay

    relay = await run_relay(resolve_url(url), broker, once=once, handle_signals=not once, **options)
    logger.info(
        "relay %s stopped: %d published, %d failed (retried later), %d parked",
        relay.owner, relay.published, relay.failed, relay.parked,
    )
    return 0
