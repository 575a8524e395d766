"""The outbox relay: publishes committed outbox rows to a message broker.

Run any number of relays, on any hosts, over one database: each pass claims
a batch of due rows under a lease (`OutboxStorage.claim_outbox`; a row is
claimable only when it is the earliest unpublished row of its saga, so one
saga's messages go out in order), publishes them (different sagas' messages
concurrently), and marks each published, failed (tried again after a
backoff) or, after ``retry.attempts`` failures, parked for an operator with
its error. A relay that dies mid-publish leaves its claims to expire: the
next claimer publishes those rows again, under the same message id, so a
consumer that drops duplicates by id sees each message once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cqrs.message_brokers.protocol import Message, MessageBroker
from cqrs.outbox.models import OutboxRecord
from cqrs.outbox.protocol import OutboxStorage
from cqrs.saga._ownership import process_owner
from cqrs.saga.hooks import error_text
from cqrs.saga.retry import RetryPolicy

__all__ = ["DEFAULT_RELAY_RETRY", "OutboxRelay", "broker_message"]

logger = logging.getLogger("cqrs.outbox")

#: Ten tries in all, 1 s apart at first, doubling up to 5 minutes between tries.
DEFAULT_RELAY_RETRY = RetryPolicy(attempts=10, delay=1.0, backoff=2.0, max_delay=300.0)


def broker_message(row: OutboxRecord) -> Message:
    """The broker message of an outbox row (its message id is the row's, so every retry reuses it)."""
    return Message(
        message_name=row.name,
        topic=row.topic,
        payload=row.payload,
        message_id=row.message_id,
        headers=dict(row.headers),
    )


class OutboxRelay:
    """Publishes outbox rows through ``broker`` until stopped (see the module doc).

    ``batch_size`` rows are claimed per pass, leased for ``lease_seconds``
    (longer than a publish takes); with fewer due rows than that the relay
    waits ``poll_interval`` seconds before the next pass (or until `wake`).
    ``retry`` says how often and how patiently a failing row is retried
    before it is parked. ``sleep`` is what waits go through (tests pass a fake).
    """

    def __init__(
        self,
        storage: OutboxStorage,
        broker: MessageBroker,
        *,
        batch_size: int = 100,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        retry: RetryPolicy = DEFAULT_RELAY_RETRY,
        owner: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.storage = storage
        self.broker = broker
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.retry = retry
        self.owner = owner or f"relay:{process_owner()}"
        self.published = 0
        self.failed = 0
        self.parked = 0
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    def stop(self) -> None:
        """Ask `run` to return after the pass under way."""
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Start the next pass now rather than after the poll interval (e.g. after a commit with messages)."""
        self._wake.set()

    async def run(self) -> None:
        """Publish in passes until `stop`; a storage error is logged and the pass retried after the interval."""
        while not self._stop.is_set():
            try:
                claimed = await self.run_once()
            except Exception:
                logger.warning("Outbox relay pass failed; retrying in %.1fs", self.poll_interval, exc_info=True)
                claimed = 0
            if claimed < self.batch_size and not self._stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                self._wake.clear()

    async def run_once(self) -> int:
        """One pass: claim due rows, publish them, mark them; returns how many were claimed."""
        rows = await self.storage.claim_outbox(self.owner, self.lease_seconds, limit=self.batch_size)
        if not rows:
            return 0
        outcomes = await asyncio.gather(*(self._publish(row) for row in rows))
        published = [row.seq for row, ok in zip(rows, outcomes, strict=True) if ok]
        if published:
            self.published += await self.storage.mark_published(self.owner, published)
        return len(rows)

    async def _publish(self, row: OutboxRecord) -> bool:
        try:
            await self.broker.send_message(broker_message(row))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._failed(row, error)
            return False
        return True

    async def _failed(self, row: OutboxRecord, error: Exception) -> None:
        attempt = row.attempts + 1
        retry_in: float | None = None
        if attempt < self.retry.attempts and self.retry.should_retry(error):
            retry_in = self.retry.delay_before(attempt)
        if retry_in is None:
            self.parked += 1
            logger.error(
                "Outbox message %s (saga %s, topic %s) parked after %d failed attempts: %s",
                row.message_id, row.saga_id, row.topic, attempt, error_text(error),
            )
        else:
            self.failed += 1
            logger.warning(
                "Outbox message %s (saga %s) could not be published (attempt %d: %s); retrying in %.1fs",
                row.message_id, row.saga_id, attempt, error_text(error), retry_in,
            )
        await self.storage.mark_failed(self.owner, row.seq, error_text(error), retry_in=retry_in)
