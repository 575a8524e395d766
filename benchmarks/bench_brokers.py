"""What relaying costs per broker: the outbox relay through an adapter against the broker's bare client.

    .venv/bin/python benchmarks/bench_brokers.py                  # RabbitMQ, Redis, NATS; PostgreSQL; ~3 min
    .venv/bin/python benchmarks/bench_brokers.py --brokers redis   # one broker
    .venv/bin/python benchmarks/bench_brokers.py --quick           # a smoke run in seconds, rough figures

For each broker, in the same run, ``--messages`` outbox rows (3 a saga, as
the events saga writes them; seeded in PostgreSQL outside the clock) are
published by

- relay: `OutboxRelay.drain` through the adapter (`RabbitMQBroker`,
  `RedisStreamsBroker`, `NatsJetStreamBroker`): claims with a lease, the
  per-saga order test, publication with the broker's confirm, the marks;
- bare: the broker's own client (aio-pika with publisher confirms, redis-py
  ``XADD``, nats-py JetStream ``publish``) sending the same messages (the
  same bodies, headers and ids, read from the rows beforehand), ``--batch``
  at a time concurrently, as the relay sends a claimed batch, and touching
  no database;

``--relays`` relays (and as many bare publishers) at once. Per round relay ÷
bare in messages/s; rounds alternate which goes first; the figure is the
median of the per-round ratios. Each side publishes to streams/queues of its
own (so JetStream's duplicate window does not drop the bare client's copies),
and every run checks that the broker holds every message.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import typing
import uuid

from cqrs.message_brokers.protocol import Message, MessageBroker
from cqrs.outbox.relay import broker_message

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_outbox import Database, Pass, relay_run

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/cqrs_bench_brokers"
BROKERS = ("rabbitmq", "redis", "nats")


def body_of(message: Message) -> bytes:
    return json.dumps(message.payload, separators=(",", ":")).encode()


class Target(abc.ABC):
    """One broker: its adapter for the relay, its bare client, and a count of what it holds per side."""

    name: str

    def __init__(self) -> None:
        self.tag = f"cqrs-bench-{uuid.uuid4().hex[:8]}"

    @abc.abstractmethod
    async def setup(self) -> None: ...

    @abc.abstractmethod
    async def cleanup(self) -> None: ...

    @abc.abstractmethod
    def adapter(self) -> MessageBroker: ...

    @abc.abstractmethod
    async def bare(self, side: str) -> typing.Callable[[Message], typing.Awaitable[None]]:
        """A publish function of the bare client, connected."""

    @abc.abstractmethod
    async def held(self, side: str) -> int:
        """How many messages the broker holds for ``side`` (``relay`` or ``bare``); empties it."""

    @abc.abstractmethod
    async def close_bare(self) -> None:
        """Close the bare client `bare` connected."""


class RabbitMQ(Target):
    name = "rabbitmq"
    url = "amqp://guest:guest@127.0.0.1:5672/"

    async def _channel(self) -> typing.Any:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        return connection, await connection.channel()

    async def setup(self) -> None:
        import aio_pika

        connection, channel = await self._channel()
        async with connection:
            for side in ("relay", "bare"):
                exchange = await channel.declare_exchange(f"{self.tag}-{side}", aio_pika.ExchangeType.TOPIC,
                                                          durable=True)
                queue = await channel.declare_queue(f"{self.tag}-{side}", durable=True)
                await queue.bind(exchange, "#")

    async def cleanup(self) -> None:
        connection, channel = await self._channel()
        async with connection:
            for side in ("relay", "bare"):
                await channel.queue_delete(f"{self.tag}-{side}")
                await channel.exchange_delete(f"{self.tag}-{side}")

    def adapter(self) -> MessageBroker:
        from cqrs.message_brokers.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(self.url, exchange=f"{self.tag}-relay")

    async def bare(self, side: str) -> typing.Callable[[Message], typing.Awaitable[None]]:
        import aio_pika

        self._connection = await aio_pika.connect(self.url)
        channel = await self._connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{self.tag}-{side}")

        async def publish(message: Message) -> None:
            headers = {**(message.headers or {}), "message-name": message.message_name}
            await exchange.publish(
                aio_pika.Message(body_of(message), headers=headers, content_type="application/json",
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=str(message.message_id)),
                message.topic, mandatory=True,
            )

        return publish

    async def close_bare(self) -> None:
        await self._connection.close()

    async def held(self, side: str) -> int:
        connection, channel = await self._channel()
        async with connection:
            queue = await channel.declare_queue(f"{self.tag}-{side}", durable=True, passive=True)
            count = int(queue.declaration_result.message_count or 0)
            await queue.purge()
            return count


class Redis(Target):
    name = "redis"
    url = "redis://127.0.0.1:6379/0"

    async def setup(self) -> None:
        pass

    async def cleanup(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        await client.delete(*(f"{self.tag}-{side}:orders" for side in ("relay", "bare")))
        await client.aclose()

    def adapter(self) -> MessageBroker:
        from cqrs.message_brokers.redis import RedisStreamsBroker

        return RedisStreamsBroker(self.url, stream_prefix=f"{self.tag}-relay:")

    async def bare(self, side: str) -> typing.Callable[[Message], typing.Awaitable[None]]:
        import redis.asyncio as aioredis

        from cqrs.message_brokers.redis import MAX_CONNECTIONS

        pool = aioredis.BlockingConnectionPool.from_url(self.url, max_connections=MAX_CONNECTIONS, timeout=None)
        self._client = aioredis.Redis.from_pool(pool)  # the adapter's pool, so both wait the same way

        async def publish(message: Message) -> None:
            headers = {**(message.headers or {}), "message-name": message.message_name}
            await self._client.xadd(f"{self.tag}-{side}:{message.topic}", {
                "message-id": str(message.message_id), "name": message.message_name,
                "content-type": "application/json", "headers": json.dumps(headers), "body": body_of(message),
            })

        return publish

    async def close_bare(self) -> None:
        await self._client.aclose()

    async def held(self, side: str) -> int:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        try:
            key = f"{self.tag}-{side}:orders"
            count = int(await client.xlen(key))
            await client.delete(key)
            return count
        finally:
            await client.aclose()


class Nats(Target):
    name = "nats"
    url = "nats://127.0.0.1:4222"

    def stream(self, side: str) -> str:
        return f"{self.tag}-{side}".replace("-", "_").upper()

    async def _js(self) -> typing.Any:
        import nats

        client = await nats.connect(self.url)
        return client, client.jetstream()

    async def setup(self) -> None:
        client, js = await self._js()
        for side in ("relay", "bare"):
            await js.add_stream(name=self.stream(side), subjects=[f"{self.tag}.{side}.>"])
        await client.close()

    async def cleanup(self) -> None:
        client, js = await self._js()
        for side in ("relay", "bare"):
            await js.delete_stream(self.stream(side))
        await client.close()

    def adapter(self) -> MessageBroker:
        from cqrs.message_brokers.nats import NatsJetStreamBroker

        return NatsJetStreamBroker(self.url, subject_prefix=f"{self.tag}.relay.")

    async def bare(self, side: str) -> typing.Callable[[Message], typing.Awaitable[None]]:
        self._client, js = await self._js()

        async def publish(message: Message) -> None:
            headers = {**(message.headers or {}), "message-name": message.message_name,
                       "Nats-Msg-Id": str(message.message_id)}
            await js.publish(f"{self.tag}.{side}.{message.topic}", body_of(message), headers=headers)

        return publish

    async def close_bare(self) -> None:
        await self._client.close()

    async def held(self, side: str) -> int:
        client, js = await self._js()
        try:
            count = int((await js.stream_info(self.stream(side))).state.messages)
            await js.purge_stream(self.stream(side))
            return count
        finally:
            await client.close()


TARGETS: dict[str, type[Target]] = {"rabbitmq": RabbitMQ, "redis": Redis, "nats": Nats}


async def bare_run(target: Target, messages: list[Message], workers: int, batch: int) -> Pass:
    """The bare client publishing ``messages``: ``workers`` publishers, each ``batch`` at a time concurrently."""
    publish = await target.bare("bare")
    queue = [messages[i:i + batch] for i in range(0, len(messages), batch)]

    async def worker() -> int:
        done = 0
        while queue:
            chunk = queue.pop(0)
            await asyncio.gather(*(publish(m) for m in chunk))
            done += len(chunk)
        return done

    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        published = sum(await asyncio.gather(*(worker() for _ in range(workers))))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        await target.close_bare()
    return Pass("bare", workers, published, wall, cpu)


async def broker_part(db: Database, target: Target, levels: list[int], rounds: int, messages: int,
                      batch: int) -> dict[str, typing.Any]:
    every: dict[tuple[str, int], list[Pass]] = {}
    adapter = target.adapter()
    try:
        for number in range(rounds):
            for workers in levels:
                await db.truncate()
                await db.seed(messages)
                storage = db.storage()
                try:
                    rows = await storage.list_outbox(limit=messages)
                finally:
                    await storage.close()
                copies = [broker_message(row) for row in rows]
                for label in ("relay", "bare") if number % 2 == 0 else ("bare", "relay"):
                    if label == "relay":
                        run = await relay_run(db, adapter, workers, batch)
                    else:
                        run = await bare_run(target, copies, workers, batch)
                    held = await target.held(label)
                    if run.messages != messages or held != messages:
                        raise RuntimeError(f"{target.name} {label}: published {run.messages}, broker holds {held}, "
                                           f"of {messages} messages")
                    every.setdefault((label, workers), []).append(run)
                    print(f"  {target.name:8} round {number + 1} {label:5} workers={workers:<2} {run.rate:9.1f} "
                          f"messages/s  CPU {run.cpu_seconds / run.messages * 1e6:.1f} µs/message", flush=True)
    finally:
        await adapter.close()  # type: ignore[attr-defined]
    figures: dict[str, typing.Any] = {"rows": [], "ratios": {}}
    for workers in levels:
        relay, bare = every[("relay", workers)], every[("bare", workers)]
        rates = [r.rate / b.rate for r, b in zip(relay, bare, strict=True)]
        for label, runs in (("relay", relay), ("bare", bare)):
            figures["rows"].append({
                "label": label, "workers": workers, "messages_per_s": statistics.median(r.rate for r in runs),
                "cpu_us_per_message": statistics.median(r.cpu_seconds / r.messages * 1e6 for r in runs),
            })
        figures["ratios"][str(workers)] = {"throughput": statistics.median(rates), "per_round": rates}
    return figures


async def main(args: argparse.Namespace) -> int:
    levels = [int(n) for n in args.relays.split(",")]
    rounds = 1 if args.quick else args.rounds
    messages = 300 if args.quick else args.messages
    url = args.url or os.environ.get("CQRS_BENCH_URL") or DEFAULT_PG
    db = Database(url, create=not (args.url or os.environ.get("CQRS_BENCH_URL")))
    description = await db.setup()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{description}; {os.cpu_count()} CPUs (load {load:.1f}); python {sys.version.split()[0]}")
    print(f"{messages} messages a run (3 a saga), batches of {args.batch}, workers {levels}, {rounds} round(s)")
    summary: dict[str, typing.Any] = {"backend": description, "messages": messages, "batch": args.batch,
                                      "brokers": {}}
    for name in args.brokers.split(","):
        target = TARGETS[name]()
        await target.setup()
        try:
            summary["brokers"][name] = await broker_part(db, target, levels, rounds, messages, args.batch)
        finally:
            await target.cleanup()
    print("\nrelay (OutboxRelay through the adapter) ÷ bare client (the broker's library, no database), messages/s")
    for name, figures in summary["brokers"].items():
        for row in figures["rows"]:
            print(f"  {name:8} {row['label']:5} workers={row['workers']:<2} median {row['messages_per_s']:9.1f} "
                  f"messages/s, client CPU {row['cpu_us_per_message']:.1f} µs/message")
        for workers, ratio in figures["ratios"].items():
            print(f"  {name:8} workers={workers:<2} relay/bare per round: "
                  f"{' '.join(f'{r:.2f}' for r in ratio['per_round'])} (median {ratio['throughput']:.2f})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="SQLAlchemy asyncpg URL of a database to use as it is (its saga and outbox "
                        "tables are emptied; default: env CQRS_BENCH_URL, else a fresh database cqrs_bench_brokers)")
    parser.add_argument("--brokers", default=",".join(BROKERS), help="comma-separated: rabbitmq, redis, nats")
    parser.add_argument("--messages", type=int, default=6000, help="messages a run (default 6000)")
    parser.add_argument("--relays", default="1,4", help="relays (and bare publishers) at once (default 1,4)")
    parser.add_argument("--batch", type=int, default=100, help="rows a relay claims a pass, messages a bare "
                        "publisher sends at once (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="runs per row; the ratios are per-round medians")
    parser.add_argument("--quick", action="store_true", help="one round of 300 messages: a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
