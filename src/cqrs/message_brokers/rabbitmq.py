"""RabbitMQ (aio-pika): `RabbitMQBroker` publishes, `RabbitMQSubscription` consumes a queue.

    pip install 'cqrs-saga[rabbitmq]'

    broker = RabbitMQBroker("amqp://guest:guest@127.0.0.1/", exchange="events")
    relay = await run_relay(storage, broker)        # or: async with broker: await broker.send_message(m)

Messages go to a durable topic exchange, the message's topic as routing
key, persistent, with the message id, correlation id and name in the AMQP
properties and every header (message id, saga id, correlation id, ...) in
the headers table. Publishing waits for the broker's publisher confirm and
is mandatory: `send_message` returns once RabbitMQ has taken the message
into a queue, and raises if it was routed to none (no queue bound) or the
connection is lost, so the relay retries it.
"""

from __future__ import annotations

try:
    import aio_pika
    import aio_pika.abc
    from pamqp.commands import Basic
except ImportError as _error:  # pragma: no cover - exercised in a test with aio_pika hidden
    raise ImportError(
        "cqrs.message_brokers.rabbitmq needs aio-pika, which is not installed: pip install 'cqrs-saga[rabbitmq]'"
    ) from _error

import asyncio
import contextlib
import logging
import typing
import uuid

from cqrs.message_brokers._closing import CloseCount
from cqrs.message_brokers._wire import HEADER_CORRELATION_ID, message_body, message_headers, text_headers
from cqrs.message_brokers.consumer import Handler, Received, Settlement, settle
from cqrs.message_brokers.protocol import Message, MessageBroker

__all__ = ["RabbitMQBroker", "RabbitMQSubscription"]

logger = logging.getLogger("cqrs.message_brokers")


class _Connection:
    """A connection and channel opened on first use and opened again after they were lost.

    `close` does not wait for a connect under way (it may hang as long as the network lets it): that connect
    closes what it opened when it finishes, and fails.
    """

    def __init__(self, url: str, confirms: bool) -> None:
        self.url = url
        self.confirms = confirms
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._closes = CloseCount()

    async def channel(self) -> aio_pika.abc.AbstractChannel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        closes = self._closes.value
        what = f"the RabbitMQ connection to {self.url!r}"
        async with self._lock:
            self._closes.check(closes, what)
            if self._channel is None or self._channel.is_closed:
                await self._close_current()
                connection = await aio_pika.connect(self.url)
                try:
                    channel = await connection.channel(publisher_confirms=self.confirms)
                    self._closes.check(closes, what)
                except BaseException:
                    await _close_quietly(connection)
                    raise
                self._connection, self._channel = connection, channel
            return self._channel

    async def drop(self, channel: aio_pika.abc.AbstractChannel) -> None:
        """Close the connection if ``channel`` (on which a publish failed) is still the current one."""
        if channel is self._channel:
            await self._close_current()

    async def close(self) -> None:
        """Close the connection, and make a connect under way close what it opens (the next use opens anew)."""
        self._closes.closed()
        await self._close_current()

    async def _close_current(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            await _close_quietly(connection)


async def _close_quietly(connection: aio_pika.abc.AbstractConnection) -> None:
    if not connection.is_closed:
        with contextlib.suppress(Exception):
            await connection.close()


class RabbitMQBroker(MessageBroker):
    """Publishes to the topic exchange ``exchange`` (declared durable on connect unless ``declare=False``).

    ``url`` is an AMQP URL (``amqp://user:password@host:port/vhost``). The
    connection is opened on first use (or by `connect` / ``async with``) and
    opened again on the next send after it was lost. ``routing_key`` maps a
    message to its routing key (default: its topic).
    """

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        exchange: str = "cqrs",
        declare: bool = True,
        routing_key: typing.Callable[[Message], str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.exchange_name = exchange
        self.declare = declare
        self.routing_key = routing_key or (lambda message: message.topic)
        self.timeout = timeout
        self._connection = _Connection(url, confirms=True)
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._exchange_channel: aio_pika.abc.AbstractChannel | None = None

    async def connect(self) -> RabbitMQBroker:
        """Connect now (and declare the exchange) rather than on the first send."""
        await self._get_exchange()
        return self

    async def close(self) -> None:
        """Close the connection (the next send opens a new one). A connect under way is not waited for: it
        closes what it opens when it finishes, and its send fails."""
        await self._connection.close()

    async def __aenter__(self) -> RabbitMQBroker:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _get_exchange(self) -> aio_pika.abc.AbstractExchange:
        channel = await self._connection.channel()
        if self._exchange is None or self._exchange_channel is not channel:
            if self.declare:
                self._exchange = await channel.declare_exchange(
                    self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                )
            else:
                self._exchange = await channel.get_exchange(self.exchange_name, ensure=False)
            self._exchange_channel = channel
        return self._exchange

    async def send_message(self, message: Message) -> None:
        """Publish ``message`` and wait for RabbitMQ's confirm; raises if it was not taken into a queue."""
        body, content_type = message_body(message)
        headers = message_headers(message)
        amqp_message = aio_pika.Message(
            body,
            headers=dict(headers),
            content_type=content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(message.message_id),
            correlation_id=headers.get(HEADER_CORRELATION_ID),
            type=message.message_name,
        )
        exchange = await self._get_exchange()
        channel = self._exchange_channel
        try:
            confirmation = await exchange.publish(
                amqp_message, self.routing_key(message), mandatory=True, timeout=self.timeout
            )
        except Exception:
            if channel is not None:
                await self._connection.drop(channel)  # the next send reconnects
            raise
        if not isinstance(confirmation, Basic.Ack):  # a Basic.Return (routed to no queue) or a Basic.Nack
            what = "routed it to no queue" if not isinstance(confirmation, Basic.Nack) else "refused it"
            raise ConnectionError(
                f"RabbitMQ {what}: message {message.message_id} to {self.exchange_name!r} "
                f"with routing key {self.routing_key(message)!r}"
            )


class RabbitMQSubscription:
    """Consumes the durable queue ``queue`` (declared on start, bound to ``exchange`` with ``bindings``).

    Messages are handed to the handler one at a time by default
    (``prefetch=1``): acknowledged after the handler returns, rejected
    without requeue (dead-lettered if the queue has a dead-letter exchange)
    when it raises `cqrs.message_brokers.consumer.Rejected`, and put back
    after ``retry_delay`` seconds when it raises anything else. A message
    whose producer gave it no id (no ``message_id`` property nor
    ``message-id`` header) is received under a random one: an inbox cannot
    tell its redeliveries apart, but never takes it for another message.
    """

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        queue: str,
        exchange: str = "cqrs",
        bindings: typing.Sequence[str] = ("#",),
        declare: bool = True,
        prefetch: int = 1,
        retry_delay: float = 1.0,
    ) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self.url = url
        self.queue_name = queue
        self.exchange_name = exchange
        self.bindings = tuple(bindings)
        self.declare = declare
        self.prefetch = prefetch
        self.retry_delay = retry_delay

    async def run(self, handler: Handler, *, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set; the messages under way are settled before this returns.

        Raises ``ConnectionError`` when the connection or the channel is lost or RabbitMQ cancels the
        consumer (its queue was deleted), so `cqrs.message_brokers.consumer.consume` subscribes again.
        """
        stop = stop or asyncio.Event()
        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self.prefetch)
            if self.declare:
                exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC,
                                                          durable=True)
                queue = await channel.declare_queue(self.queue_name, durable=True)
                for key in self.bindings:
                    await queue.bind(exchange, key)
            else:
                queue = await channel.get_queue(self.queue_name, ensure=True)
            under_way: set[asyncio.Task[None]] = set()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                task = asyncio.current_task()
                if task is not None:
                    under_way.add(task)
                try:
                    await self._handle(handler, message)
                finally:
                    if task is not None:
                        under_way.discard(task)

            if stop.is_set():  # stopped while this connected: take no message
                return
            tag = await queue.consume(on_message)
            # The broker can end the consumer with the connection up: it closes the channel on a channel error
            # (an ack past consumer_timeout) and cancels the consumer when its queue is deleted or moves.
            cancelled = asyncio.Event()

            def on_cancel(frame: typing.Any) -> None:
                if getattr(frame, "consumer_tag", None) == tag:
                    cancelled.set()

            (await channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(on_cancel)
            lost = asyncio.ensure_future(_closed(channel))  # a channel is closed with its connection too
            ended = asyncio.ensure_future(cancelled.wait())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({lost, ended, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (lost, ended, stopped):
                    waiter.cancel()
            if not stop.is_set():
                what = "cancelled the consumer" if cancelled.is_set() else "closed the channel or the connection"
                raise ConnectionError(f"RabbitMQ {what} of queue {self.queue_name!r}")
            if not channel.is_closed:
                await queue.cancel(tag)
                if under_way:
                    await asyncio.wait(set(under_way))
        finally:
            if not connection.is_closed:
                await connection.close()

    async def _handle(self, handler: Handler, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        headers = text_headers(message.headers)
        received = Received(
            # Without the producer's id nothing identifies the message across deliveries (delivery tags restart
            # at 1 on every channel, so one would make the inbox drop other messages): an id of its own.
            message_id=message.message_id or headers.get("message-id") or str(uuid.uuid4()),
            topic=message.routing_key or "",
            body=message.body,
            headers=headers,
            content_type=message.content_type,
            redelivered=bool(message.redelivered),
        )
        outcome = await settle(handler, received)
        if outcome is Settlement.ACK:
            await message.ack()
        elif outcome is Settlement.REJECT:
            await message.reject(requeue=False)
        else:
            await asyncio.sleep(self.retry_delay)
            await message.nack(requeue=True)


async def _closed(channel: aio_pika.abc.AbstractChannel) -> None:
    closing = asyncio.Event()
    channel.close_callbacks.add(lambda *_: closing.set())
    if not channel.is_closed:
        await closing.wait()
