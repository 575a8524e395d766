"""The broker adapters against the real RabbitMQ, Redis and NATS JetStream on this machine.

- A message published through an adapter is held by the broker with its body
  as JSON and its id, saga id, correlation id and name in the headers.
- `send_message` raises when the broker did not take the message (RabbitMQ:
  routed to no queue; NATS: no stream takes the subject; Redis: the stream's
  key holds something else), so a relay retries it rather than marking it
  published.
- A publisher whose connection was cut fails, then publishes again once the
  broker is reachable, by itself.
- A missing extra says which one to install.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import typing
import uuid

import pytest

from broker_kits import TOPIC, Kit
from cqrs.message_brokers.protocol import Message
from tcp_proxy import TcpProxy


def outbox_like(n: int = 0, topic: str = TOPIC) -> Message:
    message_id, saga_id = uuid.uuid4(), uuid.uuid4()
    headers = {"message-id": str(message_id), "saga-id": str(saga_id), "correlation-id": f"corr-{n}",
               "event-name": "order.shipped"}
    return Message("OrderShipped", topic, {"order": n, "note": "caf\u00e9"}, message_id, headers=headers)


async def test_a_published_message_carries_its_ids_in_headers(broker_kit: Kit) -> None:
    messages = [outbox_like(n) for n in range(3)]
    broker = broker_kit.broker()
    try:
        for message in messages:
            await broker.send_message(message)
    finally:
        await broker.close()  # type: ignore[attr-defined]
    received = await broker_kit.received()
    assert [d.message_id for d in received] == [str(m.message_id) for m in messages]
    for got, sent in zip(received, messages, strict=True):
        assert got.payload == sent.payload
        assert got.headers == sent.headers  # message id, saga id, correlation id, event name
        assert got.name == "OrderShipped" and got.topic == TOPIC


@pytest.mark.rabbitmq
async def test_rabbitmq_refuses_a_message_routed_to_no_queue() -> None:
    from broker_kits import RabbitMQKit
    from cqrs.message_brokers.rabbitmq import RabbitMQBroker

    kit = RabbitMQKit()
    broker = RabbitMQBroker(kit.url, exchange=kit.name)  # the exchange is declared, no queue is bound
    try:
        with pytest.raises(ConnectionError, match="routed it to no queue"):
            await broker.send_message(outbox_like())
    finally:
        await broker.close()
        await kit.cleanup()


@pytest.mark.nats
async def test_nats_refuses_a_subject_no_stream_takes() -> None:
    import nats.js.errors

    from broker_kits import NatsKit
    from cqrs.message_brokers.nats import NatsJetStreamBroker

    kit = NatsKit()  # no stream made
    async with NatsJetStreamBroker(kit.url, subject_prefix=kit.prefix, timeout=2) as broker:
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await broker.send_message(outbox_like())


@pytest.mark.nats
async def test_nats_creates_its_stream_when_asked_and_drops_a_duplicate_publication() -> None:
    from broker_kits import NatsKit
    from cqrs.message_brokers.nats import NatsJetStreamBroker

    kit = NatsKit()
    try:
        message = outbox_like()
        async with NatsJetStreamBroker(kit.url, subject_prefix=kit.prefix, stream=kit.stream) as broker:
            await broker.send_message(message)
            await broker.send_message(message)  # a relay's retry of a publication whose ack was lost
        assert [d.message_id for d in await kit.received()] == [str(message.message_id)]
    finally:
        await kit.cleanup()


@pytest.mark.nats
async def test_nats_closes_its_connection_when_the_stream_cannot_be_created(monkeypatch: pytest.MonkeyPatch) -> None:
    import nats.js.errors

    from broker_kits import NatsKit
    from cqrs.message_brokers import nats as nats_adapter

    connected: list[typing.Any] = []
    connect = nats_adapter._connect

    async def recording(servers: str | list[str]) -> typing.Any:
        connected.append(await connect(servers))
        return connected[-1]

    monkeypatch.setattr(nats_adapter, "_connect", recording)
    kit = NatsKit()
    await kit.setup()  # its stream takes the subjects, so another stream for them cannot be made
    try:
        broker = nats_adapter.NatsJetStreamBroker(kit.url, subject_prefix=kit.prefix, stream=kit.stream + "_OTHER")
        for _ in range(2):  # each relay retry connects again
            with pytest.raises(nats.js.errors.BadRequestError):
                await broker.send_message(outbox_like())
        await broker.close()
        assert len(connected) == 2 and all(client.is_closed for client in connected)
    finally:
        await kit.cleanup()


class HeldConnect:
    """A connect function's stand-in: its first call opens the connection, then hands it back only once
    ``release`` is set (the adapter is still awaiting its connect meanwhile)."""

    def __init__(self, connect: typing.Callable[..., typing.Awaitable[typing.Any]]) -> None:
        self.connect = connect
        self.opened: list[typing.Any] = []
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        connection = await self.connect(*args, **kwargs)
        self.opened.append(connection)
        if len(self.opened) == 1:
            self.holding.set()
            await self.release.wait()
        return connection


async def close_during_the_first_connect(kit: Kit, held: HeldConnect, make_broker: typing.Callable[[], typing.Any]
                                        ) -> None:
    """Close a broker of ``kit`` while its first send connects, then send again: the first connection is closed,
    its send fails, the second send connects anew and is the only message the broker holds. ``kit`` is set up
    (before the connect function was held: it connects too)."""
    broker = make_broker()
    try:
        sending = asyncio.ensure_future(broker.send_message(outbox_like(1)))
        await asyncio.wait_for(held.holding.wait(), 10)
        await broker.close()
        held.release.set()
        [outcome] = await asyncio.gather(sending, return_exceptions=True)
        [first] = held.opened
        assert first.is_closed  # not kept open by a broker that was closed
        assert isinstance(outcome, ConnectionError) and "closed while it was being opened" in str(outcome)
        later = outbox_like(2)
        await broker.send_message(later)  # after close(), the next send connects anew
        await broker.close()
        assert len(held.opened) == 2 and all(connection.is_closed for connection in held.opened)
        assert [d.message_id for d in await kit.received()] == [str(later.message_id)]
    finally:
        held.release.set()
        await broker.close()
        await kit.cleanup()


@pytest.mark.rabbitmq
async def test_a_rabbitmq_connection_opened_while_the_broker_closes_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aio_pika

    from broker_kits import RabbitMQKit
    from cqrs.message_brokers.rabbitmq import RabbitMQBroker

    kit = RabbitMQKit()
    await kit.setup()
    held = HeldConnect(aio_pika.connect)
    monkeypatch.setattr(aio_pika, "connect", held)
    await close_during_the_first_connect(kit, held, lambda: RabbitMQBroker(kit.url, exchange=kit.name))


@pytest.mark.nats
async def test_a_nats_connection_opened_while_the_broker_closes_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    from broker_kits import NatsKit
    from cqrs.message_brokers import nats as nats_adapter

    kit = NatsKit()
    await kit.setup()
    held = HeldConnect(nats_adapter._connect)
    monkeypatch.setattr(nats_adapter, "_connect", held)
    await close_during_the_first_connect(
        kit, held, lambda: nats_adapter.NatsJetStreamBroker(kit.url, subject_prefix=kit.prefix)
    )


@pytest.mark.redis
async def test_a_redis_connection_opened_while_the_broker_closes_is_not_left_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The send that was connecting when ``close()`` ran appends its entry (Redis took it: failing it would
    publish it twice), and its connection does not stay open in the closed broker's pool."""
    import redis.asyncio as aioredis
    import redis.asyncio.connection as redis_connection

    from broker_kits import RedisKit
    from cqrs.message_brokers.redis import RedisStreamsBroker

    kit = RedisKit()
    await kit.setup()
    name = f"cqrs-close-{uuid.uuid4().hex[:8]}"
    real_connect = redis_connection.AbstractConnection.connect
    holding, release = asyncio.Event(), asyncio.Event()

    async def connect(self: typing.Any) -> None:
        await real_connect(self)
        if not holding.is_set():
            holding.set()
            await release.wait()

    monkeypatch.setattr(redis_connection.AbstractConnection, "connect", connect)
    broker = RedisStreamsBroker(f"{kit.url}?client_name={name}", stream_prefix=kit.prefix)
    observer = aioredis.Redis.from_url(kit.url)

    async def open_connections() -> int:
        clients = await observer.client_list()
        return sum(1 for client in clients if client.get("name") == name)

    try:
        sending = asyncio.ensure_future(broker.send_message(outbox_like(1)))
        await asyncio.wait_for(holding.wait(), 10)
        await broker.close()
        release.set()
        await sending
        assert await open_connections() == 0
        assert len(await kit.received()) == 1
    finally:
        release.set()
        await broker.close()
        await observer.aclose()
        await kit.cleanup()


@pytest.mark.redis
async def test_redis_refuses_when_the_streams_key_holds_something_else() -> None:
    import redis.asyncio as aioredis
    from redis.exceptions import ResponseError

    from broker_kits import RedisKit

    kit = RedisKit()
    client = aioredis.Redis.from_url(kit.url)
    try:
        await client.set(kit.prefix + TOPIC, "not a stream")
        broker = kit.broker()
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await broker.send_message(outbox_like())
        await broker.close()  # type: ignore[attr-defined]
    finally:
        await client.aclose()
        await kit.cleanup()


async def test_a_publisher_cut_off_fails_then_publishes_again_by_itself(broker_kit: Kit) -> None:
    host, port = broker_kit.address.split(":")
    proxy = await TcpProxy(host, int(port)).start()
    broker = broker_kit.broker(proxy.address)
    first, lost, later = outbox_like(1), outbox_like(2), outbox_like(3)
    try:
        await broker.send_message(first)
        await proxy.cut()
        with pytest.raises(Exception):  # noqa: B017 - each client raises its own connection error
            await _bounded(broker.send_message(lost))
        await proxy.restore()
        await _eventually_sent(broker, later)
    finally:
        await proxy.close()
        await broker.close()  # type: ignore[attr-defined]
    ids = [d.message_id for d in await broker_kit.received()]
    assert ids[0] == str(first.message_id) and ids[-1] == str(later.message_id)
    assert str(lost.message_id) not in ids


async def _bounded(send: typing.Awaitable[None]) -> None:
    await asyncio.wait_for(send, 10)


async def _eventually_sent(broker: typing.Any, message: Message) -> None:
    """Send until it goes through (a client may need a failed send to notice its connection is gone)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            await _bounded(broker.send_message(message))
            return
        except Exception:
            assert asyncio.get_running_loop().time() < deadline, "the publisher never reconnected"
            await asyncio.sleep(0.1)


@pytest.mark.parametrize(("module", "library", "extra"), [
    ("cqrs.message_brokers.rabbitmq", "aio_pika", "rabbitmq"),
    ("cqrs.message_brokers.redis", "redis.asyncio", "redis"),
    ("cqrs.message_brokers.nats", "nats", "nats"),
])
def test_a_broker_adapter_without_its_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, library: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, library, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'cqrs-saga\[{extra}\]'"):
        importlib.import_module(module)
