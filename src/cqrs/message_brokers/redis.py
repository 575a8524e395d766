"""Redis Streams (redis-py's asyncio client): `RedisStreamsBroker` appends, `RedisStreamSubscription` consumes a
consumer group.

    pip install 'cqrs-saga[redis]'

    broker = RedisStreamsBroker("redis://127.0.0.1:6379/0", stream_prefix="events:")

Each message is one stream entry (``XADD``) in the stream named by its topic
(after ``stream_prefix``), with the fields ``message-id``, ``name``,
``content-type``, ``headers`` (the headers as a JSON object: message id,
saga id, correlation id, ...) and ``body``. `send_message` returns once
Redis has appended the entry; how durable that is depends on the server's
persistence settings (AOF with ``appendfsync always`` for the strongest).
"""

from __future__ import annotations

try:
    import redis.asyncio as aioredis
    from redis.exceptions import ResponseError
except ImportError as _error:  # pragma: no cover - exercised in a test with redis hidden
    raise ImportError(
        "cqrs.message_brokers.redis needs redis-py, which is not installed: pip install 'cqrs-saga[redis]'"
    ) from _error

import asyncio
import json
import logging
import socket
import typing

from cqrs.message_brokers._closing import CloseCount
from cqrs.message_brokers._wire import HEADER_MESSAGE_ID, message_body, message_headers, text_headers
from cqrs.message_brokers.consumer import Handler, Received, Settlement, settle
from cqrs.message_brokers.protocol import Message, MessageBroker

__all__ = ["RedisStreamSubscription", "RedisStreamsBroker"]

logger = logging.getLogger("cqrs.message_brokers")

Entry = tuple[typing.Any, dict[typing.Any, typing.Any]]


#: Connections a client made from a URL opens at most; more concurrent commands wait for one (rather than
#: fail, as redis-py's default pool makes them past 100).
MAX_CONNECTIONS = 32


def _client(source: str | aioredis.Redis) -> tuple[aioredis.Redis, bool]:
    """The client for ``source`` and whether it is ours to close."""
    if isinstance(source, str):
        pool = aioredis.BlockingConnectionPool.from_url(source, max_connections=MAX_CONNECTIONS, timeout=None)
        return aioredis.Redis.from_pool(pool), True
    return source, False


class RedisStreamsBroker(MessageBroker):
    """Appends each message to the stream ``stream_prefix + topic``.

    ``redis`` is a URL or a ``redis.asyncio.Redis`` client (left open by
    `close` when given). ``maxlen`` caps each stream (approximately, as
    ``XADD MAXLEN ~``); None keeps every entry.
    """

    def __init__(
        self,
        redis: str | aioredis.Redis = "redis://127.0.0.1:6379/0",
        *,
        stream_prefix: str = "",
        maxlen: int | None = None,
    ) -> None:
        self.client, self._owned = _client(redis)
        self.stream_prefix = stream_prefix
        self.maxlen = maxlen
        self._closes = CloseCount()  # see send_message

    def stream(self, message: Message) -> str:
        """The stream ``message`` is appended to."""
        return self.stream_prefix + message.topic

    async def close(self) -> None:
        """Close the client's connections if the client was made from a URL (the next send opens a new one)."""
        self._closes.closed()
        if self._owned:
            await self.client.aclose()

    async def __aenter__(self) -> RedisStreamsBroker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def send_message(self, message: Message) -> None:
        """``XADD`` the message; returns once Redis appended it."""
        body, content_type = message_body(message)
        headers = message_headers(message)
        fields: dict[str | bytes, str | bytes] = {
            "message-id": str(message.message_id),
            "name": message.message_name,
            "content-type": content_type,
            "headers": json.dumps(headers, separators=(",", ":")),
            "body": body,
        }
        closes = self._closes.value
        await self.client.xadd(self.stream(message), fields, maxlen=self.maxlen)  # type: ignore[arg-type]
        if closes != self._closes.value and self._owned:
            # Closed while this send connected or waited: its connection came back to the pool afterwards, open.
            await self.client.connection_pool.disconnect(inuse_connections=False)


class RedisStreamSubscription:
    """Consumes ``stream`` as ``consumer`` in the consumer group ``group`` (created, with the stream, if missing).

    Entries are read ``batch`` at a time and handed to the handler one at a
    time: acknowledged (``XACK``) after the handler returns; acknowledged
    and, when ``dead_letter`` names a stream, copied there when it raises
    `cqrs.message_brokers.consumer.Rejected`; left pending when it raises
    anything else. Pending entries idle for ``claim_idle`` seconds (a failed
    handler's, or a dead consumer's) are claimed (``XAUTOCLAIM``) and handled
    again by whichever consumer of the group gets there first. Each claim
    goes on through the pending entries from where the one before stopped
    (Redis looks at no more than ``10 * batch`` of them per call), so entries
    not idle yet at the front do not hide the idle ones after them.
    """

    def __init__(
        self,
        redis: str | aioredis.Redis = "redis://127.0.0.1:6379/0",
        *,
        stream: str,
        group: str,
        consumer: str | None = None,
        batch: int = 10,
        block: float = 0.5,
        claim_idle: float = 30.0,
        dead_letter: str | None = None,
        start_id: str = "0",
    ) -> None:
        self.client, self._owned = _client(redis)
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}:{id(self):x}"
        self.batch = batch
        self.block = block
        self.claim_idle = claim_idle
        self.dead_letter = dead_letter
        self.start_id = start_id
        self._claim_from = "0-0"  # where the next XAUTOCLAIM goes on; Redis says "0-0" once it went through

    async def ensure_group(self) -> None:
        """Create the stream and the group (reading from ``start_id``) if missing."""
        try:
            await self.client.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def close(self) -> None:
        """Close the client's connections if the client was made from a URL."""
        if self._owned:
            await self.client.aclose()

    async def run(self, handler: Handler, *, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set (checked at least every ``block`` seconds); a client made from a URL
        has its connections closed at the end (a later run opens new ones)."""
        stop = stop or asyncio.Event()
        try:
            await self.ensure_group()
            while not stop.is_set():
                await self.run_once(handler)
        finally:
            await self.close()

    async def run_once(self, handler: Handler) -> int:
        """Handle the idle pending entries claimed now, then the new ones read (waiting up to ``block``);
        returns how many were handled."""
        claimed: typing.Any = await self.client.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=int(self.claim_idle * 1000),
            start_id=self._claim_from, count=self.batch,
        )
        self._claim_from = _text(claimed[0]) if claimed else "0-0"
        entries: list[Entry] = list(claimed[1]) if claimed else []
        for entry in entries:
            await self._handle(handler, entry, redelivered=True)
        read: typing.Any = await self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.batch,
            block=None if entries else max(1, int(self.block * 1000)),
        )
        fresh: list[Entry] = [entry for _, stream_entries in read or [] for entry in stream_entries]
        for entry in fresh:
            await self._handle(handler, entry, redelivered=False)
        return len(entries) + len(fresh)

    async def _handle(self, handler: Handler, entry: Entry, *, redelivered: bool) -> None:
        entry_id, raw = entry
        fields = text_headers({k: v for k, v in raw.items() if k not in (b"body", "body")})
        try:
            headers = {str(k): str(v) for k, v in json.loads(fields.get("headers", "{}")).items()}
        except (ValueError, AttributeError):
            headers = {}
        body = raw.get(b"body", raw.get("body", b""))
        received = Received(
            message_id=fields.get("message-id") or headers.get(HEADER_MESSAGE_ID) or _text(entry_id),
            topic=self.stream,
            body=body if isinstance(body, bytes) else str(body).encode(),
            headers=headers,
            content_type=fields.get("content-type"),
            redelivered=redelivered,
        )
        outcome = await settle(handler, received)
        if outcome is Settlement.RETRY:
            return  # stays pending; claimed again once idle for claim_idle
        if outcome is Settlement.REJECT and self.dead_letter is not None:
            await self.client.xadd(self.dead_letter, {**raw, "rejected-from": self.stream})
        await self.client.xack(self.stream, self.group, entry_id)


def _text(value: typing.Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
