"""The consuming side of the broker adapters: a received message, a handler, and what its outcome means.

Every subscription (`cqrs.message_brokers.rabbitmq.RabbitMQSubscription`,
`cqrs.message_brokers.redis.RedisStreamSubscription`,
`cqrs.message_brokers.nats.NatsSubscription`) hands each message to a
`Handler` as a `Received`, one at a time, and settles it by what the handler
did:

- it returned: the message is acknowledged (the broker forgets it);
- it raised `Rejected`: the message can never be handled (not JSON, an event
  no trigger can read); it is refused for good (dead-lettered where the
  broker has that) and not redelivered;
- it raised anything else (a database down, a bug): the message is
  redelivered later, to this consumer or another.

So a message is acknowledged only after its handler finished: what the
handler committed before returning survives a crash, and a crash before
that means a redelivery. Handlers must therefore be idempotent by message
id: `cqrs.inbox` records the ids handled, in the handler's own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import typing

from cqrs.message_brokers._wire import HEADER_CORRELATION_ID, HEADER_MESSAGE_NAME, HEADER_SAGA_ID

__all__ = ["Handler", "Received", "Rejected", "Settlement", "Subscription", "consume", "settle"]

logger = logging.getLogger("cqrs.consumer")


class Rejected(Exception):
    """Raised by a handler for a message that can never be handled: refused for good, not redelivered."""


@dataclasses.dataclass(frozen=True)
class Received:
    """A message as a subscription received it.

    ``message_id`` is the producer's stable id (the outbox's: the same on
    every redelivery and every duplicate publication); ``topic`` where it
    came from (routing key, stream, subject); ``redelivered`` whether the
    broker says it was delivered before (RabbitMQ and NATS tell; Redis
    entries claimed from another consumer count as redelivered).
    """

    message_id: str
    topic: str
    body: bytes
    headers: dict[str, str]
    content_type: str | None = None
    redelivered: bool = False

    @property
    def name(self) -> str | None:
        """The message name (an event class's name for outbox messages), if the producer sent one."""
        return self.headers.get(HEADER_MESSAGE_NAME)

    @property
    def saga_id(self) -> str | None:
        """The id of the saga whose step emitted the message, if it came from a saga's outbox."""
        return self.headers.get(HEADER_SAGA_ID)

    @property
    def correlation_id(self) -> str | None:
        return self.headers.get(HEADER_CORRELATION_ID)

    def json(self) -> typing.Any:
        """The body parsed as JSON; `Rejected` when it is not JSON (redelivering it would not help)."""
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, ValueError) as error:
            raise Rejected(f"Message {self.message_id} is not JSON: {error}") from None


#: What a subscription calls with each message (see the module doc for how its outcome settles the message).
Handler = typing.Callable[[Received], typing.Awaitable[None]]


class Subscription(typing.Protocol):
    """A broker subscription that feeds a handler until stopped."""

    async def run(self, handler: Handler, *, stop: asyncio.Event | None = None) -> None:
        """Hand each message to ``handler`` and settle it, until ``stop`` is set."""


class Settlement(str, enum.Enum):
    """How a handled message is settled with its broker."""

    ACK = "ack"
    REJECT = "reject"
    RETRY = "retry"


async def settle(handler: Handler, received: Received) -> Settlement:
    """Run ``handler`` on ``received`` and say how to settle it (errors are logged, not raised)."""
    try:
        await handler(received)
    except Rejected as error:
        logger.error("Message %s (%s) refused for good: %s", received.message_id, received.topic, error)
        return Settlement.REJECT
    except Exception:
        logger.warning("Message %s (%s) failed; it will be redelivered", received.message_id, received.topic,
                       exc_info=True)
        return Settlement.RETRY
    return Settlement.ACK


async def consume(
    subscription: Subscription,
    handler: Handler,
    *,
    stop: asyncio.Event,
    reconnect_delay: float = 1.0,
) -> None:
    """Run ``subscription`` with ``handler`` until ``stop`` is set, subscribing again (after
    ``reconnect_delay`` seconds) whenever the broker connection fails or is lost."""
    while not stop.is_set():
        try:
            await subscription.run(handler, stop=stop)
        except Exception:
            logger.warning("Subscription %r stopped; subscribing again in %.1fs", subscription, reconnect_delay,
                           exc_info=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), reconnect_delay)
