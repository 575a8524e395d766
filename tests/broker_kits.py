"""The real brokers of the tests, one kit each: names of its own, a publisher, a subscription, and a reader.

A kit gives each test its own exchange and queue (RabbitMQ), stream prefix
(Redis) or stream and subject prefix (NATS), deleted afterwards, so tests
never see each other's messages on the shared services. `Kit.received`
reads back everything the broker holds for the test, in the broker's order,
as `outbox_broker.Delivery` (the headers less those the adapter adds, so a
delivery compares equal to its outbox row).

Relay processes build the same publisher from the environment:
``--broker broker_kits:broker_from_environment`` (`Kit.environment`).
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import typing
import uuid

from conftest import require_service
from cqrs.message_brokers.protocol import MessageBroker
from outbox_broker import Delivery

RABBITMQ = ("127.0.0.1", int(os.environ.get("CQRS_TEST_RABBITMQ_PORT", "5672")))
REDIS = ("127.0.0.1", int(os.environ.get("CQRS_TEST_REDIS_PORT", "6379")))
NATS = ("127.0.0.1", int(os.environ.get("CQRS_TEST_NATS_PORT", "4222")))
SERVICES = {"rabbitmq": ("RabbitMQ", RABBITMQ), "redis": ("Redis", REDIS), "nats": ("NATS", NATS)}
ADDED_HEADERS = {"message-name", "content-type", "Nats-Msg-Id"}
TOPIC = "orders"


def url(kind: str, address: str) -> str:
    if kind == "rabbitmq":
        return f"amqp://guest:guest@{address}/"
    return f"{kind}://{address}"


class Kit(abc.ABC):
    """One broker's names for one test."""

    kind: str

    def __init__(self, name: str | None = None, address: str | None = None, *, check: bool = True) -> None:
        label, (host, port) = SERVICES[self.kind]
        if check:
            require_service(label, host, port)
        self.name = name or f"cqrs-test-{uuid.uuid4().hex[:12]}"
        self.address = address or f"{host}:{port}"

    @property
    def url(self) -> str:
        return url(self.kind, self.address)

    def environment(self, address: str | None = None) -> dict[str, str]:
        """What a relay process needs to publish here (through ``address``, a proxy, if given)."""
        return {"CQRS_TEST_BROKER_KIND": self.kind, "CQRS_TEST_BROKER_NAME": self.name,
                "CQRS_TEST_BROKER_URL": url(self.kind, address or self.address)}

    @abc.abstractmethod
    async def setup(self) -> None:
        """Create what publishing needs (a queue bound to the exchange, a stream)."""

    @abc.abstractmethod
    async def cleanup(self) -> None:
        """Delete everything the test created."""

    @abc.abstractmethod
    def broker(self, address: str | None = None) -> MessageBroker:
        """The publisher, connecting to ``address`` (a proxy) if given."""

    @abc.abstractmethod
    async def received(self) -> list[Delivery]:
        """Everything the broker holds for this test, in the broker's order."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many messages the broker holds for this test."""

    @abc.abstractmethod
    def subscription(self) -> typing.Any:
        """A subscription to this test's messages (quick to retry, for the tests)."""

    @abc.abstractmethod
    async def unsettled(self) -> int:
        """How many messages the subscription's consumer has not settled (read with it stopped)."""


def delivery(topic: str, headers: dict[str, str], body: bytes) -> Delivery:
    return Delivery(
        message_id=headers["message-id"], saga_id=headers.get("saga-id", ""), name=headers["message-name"],
        topic=topic, payload=json.loads(body), headers={k: v for k, v in headers.items() if k not in ADDED_HEADERS},
    )


class RabbitMQKit(Kit):
    """Exchange ``name`` and, bound to it with ``#``, the ledger queue ``name`` (what was published).

    Reading takes the messages off the queue (acknowledged) and keeps them in ``seen``, in order.
    """

    kind = "rabbitmq"

    def __init__(self, name: str | None = None, address: str | None = None, *, check: bool = True) -> None:
        super().__init__(name, address, check=check)
        self.seen: list[Delivery] = []

    async def setup(self) -> None:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(self.name, aio_pika.ExchangeType.TOPIC, durable=True)
            for name in (self.name, self.consumer_queue):
                queue = await channel.declare_queue(name, durable=True)
                await queue.bind(exchange, "#")

    @property
    def consumer_queue(self) -> str:
        return f"{self.name}-in"

    async def cleanup(self) -> None:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(self.name)
            await channel.queue_delete(self.consumer_queue)
            await channel.exchange_delete(self.name)

    def subscription(self) -> typing.Any:
        from cqrs.message_brokers.rabbitmq import RabbitMQSubscription

        return RabbitMQSubscription(self.url, queue=self.consumer_queue, exchange=self.name, retry_delay=0.05)

    async def unsettled(self) -> int:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.consumer_queue, durable=True, passive=True)
            return int(queue.declaration_result.message_count or 0)

    def broker(self, address: str | None = None) -> MessageBroker:
        from cqrs.message_brokers.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(url(self.kind, address or self.address), exchange=self.name)

    async def received(self) -> list[Delivery]:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(self.name)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                headers = {k: str(v) for k, v in (message.headers or {}).items()}
                self.seen.append(delivery(message.routing_key or "", headers, message.body))
        return list(self.seen)

    async def count(self) -> int:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.name, durable=True, passive=True)
            return len(self.seen) + int(queue.declaration_result.message_count or 0)


class RedisKit(Kit):
    """Streams ``name:<topic>``."""

    kind = "redis"

    @property
    def prefix(self) -> str:
        return f"{self.name}:"

    async def setup(self) -> None:
        pass

    async def cleanup(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{self.name}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    def broker(self, address: str | None = None) -> MessageBroker:
        from cqrs.message_brokers.redis import RedisStreamsBroker

        return RedisStreamsBroker(url(self.kind, address or self.address), stream_prefix=self.prefix)

    async def received(self) -> list[Delivery]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        try:
            entries = await client.xrange(self.prefix + TOPIC)
        finally:
            await client.aclose()
        return [
            delivery(TOPIC, json.loads(fields[b"headers"]), fields[b"body"]) for _, fields in entries
        ]

    async def count(self) -> int:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        try:
            return int(await client.xlen(self.prefix + TOPIC))
        finally:
            await client.aclose()

    def subscription(self) -> typing.Any:
        from cqrs.message_brokers.redis import RedisStreamSubscription

        return RedisStreamSubscription(self.url, stream=self.prefix + TOPIC, group=self.name, consumer="c1",
                                       block=0.1, claim_idle=0.2)

    async def unsettled(self) -> int:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        try:
            pending = await client.xpending(self.prefix + TOPIC, self.name)
            return int(pending["pending"])
        finally:
            await client.aclose()


class NatsKit(Kit):
    """Stream ``name`` (upper-cased, dots dashed) taking the subjects ``name.>``."""

    kind = "nats"

    @property
    def stream(self) -> str:
        return self.name.replace("-", "_").upper()

    @property
    def prefix(self) -> str:
        return f"{self.name}."

    async def _js(self) -> typing.Any:
        import nats

        client = await nats.connect(self.url)
        return client, client.jetstream()

    async def setup(self) -> None:
        client, js = await self._js()
        try:
            await js.add_stream(name=self.stream, subjects=[self.prefix + ">"])
        finally:
            await client.close()

    async def cleanup(self) -> None:
        import nats.js.errors

        client, js = await self._js()
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(self.stream)
        finally:
            await client.close()

    def broker(self, address: str | None = None) -> MessageBroker:
        from cqrs.message_brokers.nats import NatsJetStreamBroker

        return NatsJetStreamBroker(url(self.kind, address or self.address), subject_prefix=self.prefix)

    async def received(self) -> list[Delivery]:
        client, js = await self._js()
        out: list[Delivery] = []
        try:
            info = await js.stream_info(self.stream)
            first = info.state.first_seq if info.state.messages else info.state.last_seq + 1
            for seq in range(first, info.state.last_seq + 1):
                raw = await js.get_msg(self.stream, seq)
                headers = {k: str(v) for k, v in (raw.headers or {}).items()}
                out.append(delivery(raw.subject.removeprefix(self.prefix), headers, raw.data or b""))
        finally:
            await client.close()
        return out

    async def count(self) -> int:
        client, js = await self._js()
        try:
            info = await js.stream_info(self.stream)
            return int(info.state.messages)
        finally:
            await client.close()

    def subscription(self) -> typing.Any:
        from cqrs.message_brokers.nats import NatsSubscription

        return NatsSubscription(self.url, subject=self.prefix + ">", durable=f"{self.name}-in", stream=self.stream,
                                fetch_timeout=0.2, retry_delay=0.05)

    async def unsettled(self) -> int:
        client, js = await self._js()
        try:
            info = await js.consumer_info(self.stream, f"{self.name}-in")
            return int(info.num_ack_pending + info.num_pending)
        finally:
            await client.close()


KITS: dict[str, type[Kit]] = {"rabbitmq": RabbitMQKit, "redis": RedisKit, "nats": NatsKit}


def broker_from_environment() -> MessageBroker:
    """The publisher a relay process uses (``--broker broker_kits:broker_from_environment``)."""
    kind = os.environ["CQRS_TEST_BROKER_KIND"]
    address = os.environ["CQRS_TEST_BROKER_URL"].split("//", 1)[1].split("@")[-1].rstrip("/")
    return KITS[kind](os.environ["CQRS_TEST_BROKER_NAME"], address, check=False).broker()
