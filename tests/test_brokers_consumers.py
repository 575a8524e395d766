"""Subscriptions to the real RabbitMQ queue, Redis Streams consumer group and NATS durable consumer, feeding an
inbox-guarded handler.

Each message is settled by what its handler did: acknowledged after it
returned, refused for good (not redelivered) when it raised `Rejected` (a body
that is not JSON), redelivered when it raised anything else, and then handled.
A duplicate publication under the same message id is handled once (the inbox).
Afterwards the broker holds nothing unsettled for the consumer.
"""

from __future__ import annotations

import asyncio
import collections
import typing
import uuid

import pytest

from broker_kits import TOPIC, Kit
from cqrs.inbox import MemoryInbox, idempotent
from cqrs.message_brokers.consumer import Received, consume
from cqrs.message_brokers.protocol import Message


def message(name: str, *, body: bytes | None = None, message_id: uuid.UUID | None = None) -> Message:
    return Message(name, TOPIC, {"name": name}, message_id or uuid.uuid4(), payload_bytes=body,
                   headers={"correlation-id": f"corr-{name}"})


async def until(condition: typing.Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


async def test_a_subscription_settles_each_message_by_its_handlers_outcome(broker_kit: Kit) -> None:
    inbox = MemoryInbox()
    deliveries: collections.Counter[str] = collections.Counter()
    redelivered: dict[str, list[bool]] = collections.defaultdict(list)
    effects: list[str] = []

    async def handle(received: Received, tx: object) -> None:
        redelivered[received.name or ""].append(received.redelivered)
        body = received.json()  # Rejected for a body that is not JSON
        if received.name == "Flaky" and len(redelivered["Flaky"]) == 1:
            raise ConnectionError("the downstream service is down")
        assert body == {"name": received.name} and received.correlation_id == f"corr-{received.name}"
        effects.append(received.name or "")

    guarded = idempotent(inbox, "test-consumer", handle)

    async def counting(received: Received) -> None:
        deliveries[received.name or ""] += 1
        await guarded(received)

    twice = uuid.uuid4()
    broker = broker_kit.broker()
    try:
        for sent in (message("A", message_id=twice), message("A", message_id=twice), message("Bad", body=b"{nope"),
                     message("Flaky"), message("Last")):
            await broker.send_message(sent)
    finally:
        await broker.close()  # type: ignore[attr-defined]

    stop = asyncio.Event()
    consumer = asyncio.ensure_future(consume(broker_kit.subscription(), counting, stop=stop, reconnect_delay=0.1))
    try:
        await until(lambda: {"A", "Flaky", "Last"} <= set(effects), 60, "every good message was handled")
    finally:
        stop.set()
        await asyncio.wait_for(consumer, 30)

    assert sorted(effects) == ["A", "Flaky", "Last"]  # the duplicate A once, Flaky after its retry
    assert deliveries["Bad"] == 1  # refused for good, never redelivered
    assert redelivered["Flaky"] == [False, True]
    assert deliveries["A"] == (1 if broker_kit.kind == "nats" else 2)  # JetStream dropped the duplicate itself
    assert await broker_kit.unsettled() == 0


@pytest.mark.redis
async def test_a_redis_entry_refused_for_good_is_copied_to_the_dead_letter_stream() -> None:
    import redis.asyncio as aioredis

    from broker_kits import RedisKit
    from cqrs.message_brokers.redis import RedisStreamSubscription

    kit = RedisKit()
    dead = f"{kit.name}:dead"
    bad = message("Bad", body=b"{nope")
    await publish(kit, bad, message("Last"))
    seen: list[str] = []

    async def handle(received: Received) -> None:
        seen.append(received.name or "")
        received.json()

    stop = asyncio.Event()
    subscription = RedisStreamSubscription(kit.url, stream=kit.prefix + TOPIC, group=kit.name, dead_letter=dead,
                                           block=0.1)
    consumer = asyncio.ensure_future(subscription.run(handle, stop=stop))
    client = aioredis.Redis.from_url(kit.url)
    try:
        await until(lambda: "Last" in seen, 30, "both entries were handled")
        stop.set()
        await asyncio.wait_for(consumer, 30)
        [(_, fields)] = await client.xrange(dead)
        assert fields[b"message-id"] == str(bad.message_id).encode() and fields[b"body"] == b"{nope"
        assert fields[b"rejected-from"] == (kit.prefix + TOPIC).encode()
        assert (await client.xpending(kit.prefix + TOPIC, kit.name))["pending"] == 0
    finally:
        stop.set()
        await client.aclose()
        await kit.cleanup()


@pytest.mark.redis
async def test_a_redis_subscription_reaches_an_idle_entry_behind_many_that_are_not_idle_yet() -> None:
    # XAUTOCLAIM looks at no more than 10 x COUNT pending entries per call and says where it stopped. Started
    # from the front each time, a subscription stuck behind 10 x batch entries not idle yet (retried messages,
    # messages another consumer holds) never reached a dead consumer's entry after them.
    import redis.asyncio as aioredis

    from broker_kits import RedisKit
    from cqrs.message_brokers.redis import RedisStreamSubscription

    kit = RedisKit()
    stream = kit.prefix + TOPIC
    held = 25
    await publish(kit, *(message(f"Held{n}") for n in range(held)), message("Orphan"))
    # Idle times decide, not the clock: the held entries are read now and the orphan is made an hour idle, both
    # a long way from claim_idle whatever the pace of the test.
    subscription = RedisStreamSubscription(kit.url, stream=stream, group=kit.name, consumer="c1", batch=1,
                                           block=0.01, claim_idle=600)
    client = aioredis.Redis.from_url(kit.url)
    handled: list[Received] = []

    async def handle(received: Received) -> None:
        handled.append(received)

    try:
        await subscription.ensure_group()
        await client.xreadgroup(kit.name, "alive", {stream: ">"}, count=held)
        [[_, [(orphan, _)]]] = await client.xreadgroup(kit.name, "dead", {stream: ">"}, count=1)
        await client.xclaim(stream, kit.name, "dead", 0, [orphan], idle=3_600_000)
        one_pass = -(-(held + 1) // 10)  # calls to look at every pending entry once, 10 x batch at a time
        for _ in range(one_pass):
            await subscription.run_once(handle)
        assert [(r.name, r.redelivered) for r in handled] == [("Orphan", True)]
        assert (await client.xpending(stream, kit.name))["pending"] == held
    finally:
        await subscription.close()
        await client.aclose()
        await kit.cleanup()


async def publish(kit: Kit, *messages: Message) -> None:
    broker = kit.broker()
    try:
        for sent in messages:
            await broker.send_message(sent)
    finally:
        await broker.close()  # type: ignore[attr-defined]


@pytest.mark.rabbitmq
async def test_rabbitmq_messages_without_a_message_id_are_not_taken_for_each_other_across_connections() -> None:
    # A producer other than the relay may leave the AMQP message_id unset. Delivery tags number each channel's
    # deliveries from 1, so the first message of every connection would carry the same fallback id, and the
    # inbox would drop the second as a duplicate of the first.
    import aio_pika
    from aiormq.abc import ChannelFrame
    from pamqp.body import ContentBody
    from pamqp.commands import Basic
    from pamqp.header import ContentHeader

    from broker_kits import RabbitMQKit

    kit = RabbitMQKit()
    await kit.setup()
    inbox = MemoryInbox()
    handled: list[bytes] = []

    async def handle(received: Received, tx: object) -> None:
        handled.append(received.body)

    guarded = idempotent(inbox, "test-consumer", handle)

    async def publish_and_consume_one(body: bytes) -> None:
        # aiormq gives every message it publishes an id: these frames are what another client sends without one.
        connection = await aio_pika.connect(kit.url)
        async with connection:
            channel = await (await connection.channel(publisher_confirms=False)).get_underlay_channel()
            frames = [Basic.Publish(exchange=kit.name, routing_key=TOPIC),
                      ContentHeader(properties=Basic.Properties(delivery_mode=2), body_size=len(body)),
                      ContentBody(body)]
            written = asyncio.get_running_loop().create_future()
            await channel.write_queue.put(ChannelFrame.marshall(channel.number, frames, written))
            await written
        stop = asyncio.Event()

        async def once(received: Received) -> None:
            try:
                await guarded(received)
            finally:
                stop.set()

        await asyncio.wait_for(kit.subscription().run(once, stop=stop), 30)

    try:
        await publish_and_consume_one(b'{"n": 1}')
        await publish_and_consume_one(b'{"n": 2}')
        assert handled == [b'{"n": 1}', b'{"n": 2}']
        assert await kit.unsettled() == 0
    finally:
        await kit.cleanup()


@pytest.mark.rabbitmq
async def test_a_rabbitmq_subscription_stopped_while_it_connects_takes_no_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopped before it consumes, it returns without subscribing: no message is handed over just to be
    settled on the way out."""
    import aio_pika

    from broker_kits import RabbitMQKit

    kit = RabbitMQKit()
    await kit.setup()
    consumed: list[object] = []
    real_consume = aio_pika.Queue.consume

    async def consume(self: aio_pika.Queue, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        consumed.append(self)
        return await real_consume(self, *args, **kwargs)

    monkeypatch.setattr(aio_pika.Queue, "consume", consume)
    handled: list[Received] = []

    async def handle(received: Received) -> None:
        handled.append(received)

    stop = asyncio.Event()
    stop.set()
    try:
        await asyncio.wait_for(kit.subscription().run(handle, stop=stop), 30)
        assert consumed == [] and handled == []
    finally:
        await kit.cleanup()


@pytest.mark.rabbitmq
@pytest.mark.parametrize("how", ["queue deleted", "channel closed"])
async def test_a_rabbitmq_subscription_whose_consumer_the_broker_ended_fails_so_consume_subscribes_again(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RabbitMQ cancels a consumer whose queue was deleted (or whose quorum queue's leader moved), and closes a
    # channel on a channel error (say, a delivery unacknowledged past consumer_timeout); the connection stays up.
    import aio_pika

    from broker_kits import RabbitMQKit

    kit = RabbitMQKit()
    await kit.setup()
    connections: list[typing.Any] = []
    connect = aio_pika.connect

    async def recording(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        connections.append(await connect(*args, **kwargs))
        return connections[-1]

    handled = asyncio.Event()

    async def handle(received: Received) -> None:
        handled.set()

    await publish(kit, message("A"))
    monkeypatch.setattr(aio_pika, "connect", recording)
    stop = asyncio.Event()
    running = asyncio.ensure_future(kit.subscription().run(handle, stop=stop))
    try:
        await asyncio.wait_for(handled.wait(), 30)  # it consumes
        [subscribed] = connections
        if how == "queue deleted":
            async with await connect(kit.url) as other:
                await (await other.channel()).queue_delete(kit.consumer_queue)
        else:
            [channel] = subscribed.transport.connection.channels.values()
            await channel.basic_ack(delivery_tag=10_000)  # unknown: RabbitMQ closes the channel
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(running, 30)
        assert subscribed.is_closed
    finally:
        stop.set()
        if not running.done():
            running.cancel()
        await asyncio.wait({running})
        await kit.cleanup()
