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

The relay knows the storage only by `OutboxStorage` and the broker only by
`MessageBroker.send_message`: any storage and any broker adapter fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import typing
import uuid

from cqrs.events.event import INotificationEvent
from cqrs.message_brokers.protocol import Message, MessageBroker
from cqrs.outbox.models import OutboxRecord
from cqrs.outbox.protocol import OutboxStorage
from cqrs.saga._ownership import process_owner
from cqrs.saga.hooks import RunInfo, SagaHook, error_text
from cqrs.saga.retry import RetryPolicy

__all__ = ["DEFAULT_RELAY_RETRY", "OutboxRelay", "RelayWaker", "broker_message"]

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

    ``batch_size`` rows are claimed per pass, leased for ``lease_seconds``.
    A publish that takes longer than ``publish_timeout`` (default: half the
    lease) counts as failed, so a hung broker call cannot outlive the claim
    and race the relay that takes the row over. After a pass that claimed
    rows the next pass starts at once (a saga's next message becomes due as
    soon as the one before it is marked); after an empty one the relay waits
    ``poll_interval`` seconds, or until `wake`. ``retry`` says how often and
    how patiently a failing row is retried before it is parked. ``owner``
    names the relay's claims (default: host, pid and a random part).

    ``published``, ``failed`` (publications that will be retried) and
    ``parked`` count what this relay did.
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
        publish_timeout: float | None = None,
        owner: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if lease_seconds <= 0 or poll_interval < 0:
            raise ValueError("lease_seconds must be positive and poll_interval not negative")
        timeout = lease_seconds / 2 if publish_timeout is None else publish_timeout
        if not 0 < timeout < lease_seconds:
            raise ValueError(f"publish_timeout must be positive and shorter than the lease ({lease_seconds}s)")
        self.storage = storage
        self.broker = broker
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.retry = retry
        self.publish_timeout = timeout
        self.owner = owner or f"relay:{process_owner()}:{uuid.uuid4().hex[:8]}"
        self.published = 0
        self.failed = 0
        self.parked = 0
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    def stop(self) -> None:
        """Ask `run` to return after the pass under way."""
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """Whether `stop` was called."""
        return self._stop.is_set()

    def wake(self) -> None:
        """Start the next pass now rather than after the poll interval (e.g. after a commit with messages)."""
        self._wake.set()

    def waker(self) -> RelayWaker:
        """A run hook that wakes this relay whenever a step's (or a start's) messages committed in this process:
        ``bootstrap(..., outbox=True, hooks=[relay.waker()])``."""
        return RelayWaker(self)

    async def run(self) -> None:
        """Publish in passes until `stop`; a failed pass (storage unreachable) is logged and tried again after
        the poll interval."""
        while not self._stop.is_set():
            try:
                claimed = await self.run_once()
            except Exception:
                logger.warning("Outbox relay pass failed; retrying in %.1fs", self.poll_interval, exc_info=True)
                claimed = 0
            if claimed == 0 and not self._stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                self._wake.clear()

    async def drain(self) -> int:
        """Run passes until one claims nothing (every due row published, retried later or parked); returns how
        many rows were claimed in all."""
        total = 0
        while claimed := await self.run_once():
            total += claimed
        return total

    async def run_once(self) -> int:
        """One pass: claim due rows, publish them, mark them; returns how many were claimed."""
        rows = await self.storage.claim_outbox(self.owner, self.lease_seconds, limit=self.batch_size)
        if not rows:
            return 0
        errors = await self._publish(rows)
        published = [row.seq for row, error in zip(rows, errors, strict=True) if error is None]
        if published:
            self.published += await self.storage.mark_published(self.owner, published)
        for row, error in zip(rows, errors, strict=True):
            if error is not None:
                await self._failed(row, error)
        return len(rows)

    async def _publish(self, rows: list[OutboxRecord]) -> list[Exception | None]:
        """Send the rows (one saga's at most one: they go concurrently); what each failed with, or None.

        A send still running after ``publish_timeout`` is cancelled and counts as failed.
        """
        broker = self.broker
        sends = [asyncio.ensure_future(broker.send_message(broker_message(row))) for row in rows]
        try:
            _, late = await asyncio.wait(sends, timeout=self.publish_timeout)
        except asyncio.CancelledError:
            for send in sends:
                send.cancel()
            raise
        for send in late:
            send.cancel()
        if late:
            await asyncio.wait(late)
        errors: list[Exception | None] = []
        for send in sends:
            if send in late:
                errors.append(TimeoutError(f"the broker did not take the message within {self.publish_timeout:g}s"))
            elif send.cancelled():  # by the broker itself
                errors.append(RuntimeError("the broker cancelled the send"))
            else:
                error = send.exception()
                if error is not None and not isinstance(error, Exception):
                    raise error  # KeyboardInterrupt, SystemExit: not a failed publication
                errors.append(error)
        return errors

    async def _failed(self, row: OutboxRecord, error: Exception) -> None:
        attempt = row.attempts + 1
        retry_in: float | None = None
        if attempt < self.retry.attempts and self.retry.should_retry(error):
            retry_in = self.retry.delay_before(attempt)
        if not await self.storage.mark_failed(self.owner, row.seq, error_text(error), retry_in=retry_in):
            return  # the claim expired and another relay holds the row now
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


class RelayWaker(SagaHook):
    """Wakes a relay in this process once a saga's start or a step with notification events has committed, so
    it publishes them at once instead of at its next poll."""

    __slots__ = ("relay",)

    def __init__(self, relay: OutboxRelay) -> None:
        self.relay = relay

    def saga_started(self, run: RunInfo) -> None:
        self.relay.wake()

    def step_completed(self, run: RunInfo, step: str, result: typing.Any, events: typing.Sequence[object]) -> None:
        if any(isinstance(e, INotificationEvent) for e in events):
            self.relay.wake()

    def step_compensated(self, run: RunInfo, step: str, events: typing.Sequence[object]) -> None:
        if any(isinstance(e, INotificationEvent) for e in events):
            self.relay.wake()
