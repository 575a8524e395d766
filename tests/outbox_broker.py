"""A test broker that works across processes: a small TCP service (`LedgerServer`) and its client (`TcpBroker`).

The relays under test run in other processes and publish through
`TcpBroker` (``--broker outbox_broker:TcpBroker``; it finds the server
through ``CQRS_TEST_BROKER=host:port``). The server runs in the test's event
loop and records every message it receives, in arrival order, before it
acknowledges it: the ledger the tests judge by (a message received but never
acknowledged was delivered, as a broker whose publisher confirm was lost).

It breaks the way a broker does: `stop` closes the port (connections are
refused until `start` opens it again), `hold` stops acknowledging once a
number of messages arrived (the publisher waits, mid-publish, to be killed).

One JSON line a message (``message_id``, ``saga_id``, ``name``, ``topic``,
``payload``, ``headers``), answered ``ok``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import typing

from cqrs.message_brokers.protocol import Message, MessageBroker

ADDRESS_VARIABLE = "CQRS_TEST_BROKER"


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A message as the broker received it."""

    message_id: str
    saga_id: str
    name: str
    topic: str
    payload: dict[str, typing.Any]
    headers: dict[str, str]


class LedgerServer:
    """The broker: records each message on arrival, then answers ``ok`` (unless holding)."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._hold_after: int | None = None
        self._release = asyncio.Event()
        self.holding = asyncio.Event()  # set once a message arrived that is not acknowledged
        self._arrived = asyncio.Condition()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> LedgerServer:
        """Listen (on a free port the first time, on the same port after `stop`)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the port and every open connection: clients are refused until `start`."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    def hold(self, after: int) -> None:
        """Acknowledge no message beyond the first ``after`` (in all) until `release`."""
        self._hold_after = after
        self._release.clear()

    def release(self) -> None:
        self._hold_after = None
        self._release.set()

    async def wait_for(self, condition: typing.Callable[[], bool], timeout: float = 60.0) -> None:
        """Return once ``condition()`` holds (checked on every arrival), failing after ``timeout`` seconds."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(condition), timeout)

    def ids(self) -> set[str]:
        return {d.message_id for d in self.deliveries}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                self.deliveries.append(Delivery(**json.loads(line)))
                async with self._arrived:
                    self._arrived.notify_all()
                if self._hold_after is not None and len(self.deliveries) > self._hold_after:
                    self.holding.set()
                    await self._release.wait()
                writer.write(b"ok\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class TcpBroker(MessageBroker):
    """Publishes to a `LedgerServer` (``address`` ``host:port``, default ``$CQRS_TEST_BROKER``), one connection
    per message; raises when the server refuses the connection or closes it before answering."""

    def __init__(self, address: str | None = None) -> None:
        host, _, port = (address or os.environ[ADDRESS_VARIABLE]).rpartition(":")
        self.host, self.port = host, int(port)

    async def send_message(self, message: Message) -> None:
        headers = dict(message.headers or {})
        line = json.dumps({
            "message_id": str(message.message_id),
            "saga_id": headers.get("saga-id", ""),
            "name": message.message_name,
            "topic": message.topic,
            "payload": message.payload,
            "headers": headers,
        })
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            answer = await reader.readline()
            if answer != b"ok\n":
                raise ConnectionError(f"the broker answered {answer!r}")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class MemoryBroker(MessageBroker):
    """An in-process broker for in-process tests: keeps what it got; ``failing`` maps message names to the error
    each send of that name raises (while it is there)."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.failing: dict[str, Exception] = {}
        self.attempts: collections.Counter[str] = collections.Counter()

    async def send_message(self, message: Message) -> None:
        self.attempts[message.message_name] += 1
        error = self.failing.get(message.message_name)
        if error is not None:
            raise error
        self.sent.append(message)

    def names(self) -> list[str]:
        return [m.message_name for m in self.sent]


def first_seen_order(deliveries: typing.Iterable[Delivery]) -> dict[str, list[str]]:
    """Per saga, the message ids in the order the broker first received them (duplicates dropped, as a consumer
    that deduplicates by message id would)."""
    seen: set[str] = set()
    order: dict[str, list[str]] = collections.defaultdict(list)
    for delivery in deliveries:
        if delivery.message_id not in seen:
            seen.add(delivery.message_id)
            order[delivery.saga_id].append(delivery.message_id)
    return order


def expected_order(rows: typing.Iterable[typing.Any]) -> dict[str, list[str]]:
    """Per saga, the message ids of outbox rows (`OutboxRecord`) in ``seq`` order."""
    order: dict[str, list[str]] = collections.defaultdict(list)
    for row in sorted(rows, key=lambda r: r.seq):
        order[str(row.saga_id)].append(str(row.message_id))
    return order


def unknown_or_altered(deliveries: typing.Iterable[Delivery], rows: typing.Iterable[typing.Any]) -> list[Delivery]:
    """Deliveries that are not exactly an outbox row (id, saga, name, topic, payload, headers): a duplicate must
    be the same message under the same id."""
    by_id = {str(r.message_id): r for r in rows}
    wrong = []
    for d in deliveries:
        row = by_id.get(d.message_id)
        if row is None or (d.saga_id, d.name, d.topic, d.payload, d.headers) != (
            str(row.saga_id), row.name, row.topic, row.payload, row.headers
        ):
            wrong.append(d)
    return wrong
