"""NATS JetStream (nats-py): `NatsJetStreamBroker` publishes, `NatsSubscription` consumes a durable pull consumer.

    pip install 'cqrs-saga[nats]'

    broker = NatsJetStreamBroker("nats://127.0.0.1:4222", stream="EVENTS", subject_prefix="events.")

Each message is published to the subject ``subject_prefix + topic`` with its
headers (message id, saga id, correlation id, ...) and ``Nats-Msg-Id`` set
to the message id, so JetStream itself drops a duplicate publication within
the stream's duplicate window. `send_message` returns once JetStream
acknowledged the message (stored in the stream); a subject no stream takes
raises, so the relay retries it. After a lost connection the next send
connects anew.
"""

from __future__ import annotations

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext, api
except ImportError as _error:  # pragma: no cover - exercised in a test with nats hidden
    raise ImportError(
        "cqrs.message_brokers.nats needs nats-py, which is not installed: pip install 'cqrs-saga[nats]'"
    ) from _error

import asyncio
import contextlib
import logging
import typing

from cqrs.message_brokers._closing import CloseCount
from cqrs.message_brokers._wire import HEADER_MESSAGE_ID, message_body, message_headers, text_headers
from cqrs.message_brokers.consumer import Handler, Received, Settlement, settle
from cqrs.message_brokers.protocol import Message, MessageBroker

__all__ = ["NatsJetStreamBroker", "NatsSubscription", "ensure_stream"]

logger = logging.getLogger("cqrs.message_brokers")

HEADER_NATS_MSG_ID = "Nats-Msg-Id"


async def _quiet(error: Exception) -> None:
    logger.debug("NATS client error: %r", error)


async def _connect(servers: str | list[str]) -> NatsClient:
    # No reconnecting inside the client: its reconnect loop retries the first connection forever and buffers
    # publishes while it runs. A lost connection closes the client instead, and the next use connects anew.
    return await nats.connect(
        servers, allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.2, connect_timeout=5,
        error_cb=_quiet,
    )


async def ensure_stream(js: JetStreamContext, name: str, subjects: typing.Sequence[str]) -> None:
    """Create the stream ``name`` taking ``subjects`` unless a stream of that name exists."""
    try:
        await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(name=name, subjects=list(subjects))


class NatsJetStreamBroker(MessageBroker):
    """Publishes to JetStream on ``subject_prefix + topic``.

    ``servers`` is a NATS URL (or several). With ``stream``, a stream of that
    name taking ``subject_prefix + ">"`` (or ``stream_subjects``) is created
    on connect when missing; without it, the subjects must belong to a stream
    made beforehand. ``timeout`` bounds the wait for JetStream's
    acknowledgement. The connection is made on first use (or by `connect` /
    ``async with``).
    """

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        subject_prefix: str = "",
        stream: str | None = None,
        stream_subjects: typing.Sequence[str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        if stream is not None and not stream_subjects and not subject_prefix:
            raise ValueError("a stream to create needs its subjects: give stream_subjects or a subject_prefix")
        self.servers = servers
        self.subject_prefix = subject_prefix
        self.stream = stream
        self.stream_subjects = list(stream_subjects or [subject_prefix + ">"])
        self.timeout = timeout
        self._client: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()
        self._closes = CloseCount()

    def subject(self, message: Message) -> str:
        """The subject ``message`` is published on."""
        return self.subject_prefix + message.topic

    async def connect(self) -> NatsJetStreamBroker:
        """Connect now (creating the stream if asked) rather than on the first send."""
        await self._jetstream()
        return self

    async def _jetstream(self) -> JetStreamContext:
        if self._js is not None and self._client is not None and not self._client.is_closed:
            return self._js
        closes = self._closes.value
        what = f"the NATS connection to {self.servers!r}"
        async with self._lock:
            self._closes.check(closes, what)
            if self._js is None or self._client is None or self._client.is_closed:
                client = await _connect(self.servers)
                try:
                    js = client.jetstream()
                    if self.stream is not None:
                        await ensure_stream(js, self.stream, self.stream_subjects)
                    self._closes.check(closes, what)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await client.close()
                    raise
                self._client, self._js = client, js
            return self._js

    async def close(self) -> None:
        """Close the connection (the next send opens a new one). A connect under way is not waited for: it
        closes what it opens when it finishes, and its send fails."""
        self._closes.closed()
        client, self._client, self._js = self._client, None, None
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):
                await client.close()

    async def __aenter__(self) -> NatsJetStreamBroker:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def send_message(self, message: Message) -> None:
        """Publish ``message`` and wait for JetStream's acknowledgement."""
        body, content_type = message_body(message)
        headers = message_headers(message)
        headers["content-type"] = content_type
        headers[HEADER_NATS_MSG_ID] = str(message.message_id)
        js = await self._jetstream()
        await js.publish(self.subject(message), body, timeout=self.timeout, headers=headers)


class NatsSubscription:
    """Consumes the JetStream durable pull consumer ``durable`` on ``subject`` (created if missing).

    Messages are fetched ``batch`` at a time and handed to the handler one
    at a time: acknowledged after it returns, terminated (never redelivered)
    when it raises `cqrs.message_brokers.consumer.Rejected`, and negatively
    acknowledged with a redelivery after ``retry_delay`` seconds when it
    raises anything else. A message not acknowledged within ``ack_wait``
    seconds (its consumer died) is redelivered by JetStream.
    """

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        subject: str,
        durable: str,
        stream: str | None = None,
        batch: int = 10,
        fetch_timeout: float = 0.5,
        ack_wait: float = 30.0,
        retry_delay: float = 1.0,
    ) -> None:
        self.servers = servers
        self.subject = subject
        self.durable = durable
        self.stream = stream
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.ack_wait = ack_wait
        self.retry_delay = retry_delay

    async def run(self, handler: Handler, *, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set (checked at least every ``fetch_timeout`` seconds)."""
        stop = stop or asyncio.Event()
        client = await _connect(self.servers)
        try:
            js = client.jetstream()
            config = api.ConsumerConfig(ack_wait=self.ack_wait, ack_policy=api.AckPolicy.EXPLICIT)
            puller = await js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream, config=config)
            while not stop.is_set():
                try:
                    messages = await puller.fetch(self.batch, timeout=self.fetch_timeout)
                except nats.errors.TimeoutError:
                    continue
                for message in messages:
                    await self._handle(handler, message)
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    async def _handle(self, handler: Handler, message: Msg) -> None:
        headers = text_headers(message.headers)
        metadata = message.metadata
        received = Received(
            message_id=headers.get(HEADER_MESSAGE_ID) or headers.get(HEADER_NATS_MSG_ID)
            or f"{metadata.stream}:{metadata.sequence.stream}",
            topic=message.subject,
            body=message.data,
            headers=headers,
            content_type=headers.get("content-type"),
            redelivered=metadata.num_delivered > 1,
        )
        outcome = await settle(handler, received)
        if outcome is Settlement.ACK:
            await message.ack_sync(timeout=5)
        elif outcome is Settlement.REJECT:
            await message.term()
        else:
            await message.nak(delay=self.retry_delay)
