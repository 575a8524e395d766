"""Relays as real processes against real databases, judged by what a test broker (a TCP service) received.

- A relay SIGKILLed mid-publish (the broker holds its acknowledgements, so
  the kill lands with sends in flight), then restarted: every message
  published, duplicates only of the messages it had claimed, each under its
  own id, with its own content; every saga's messages first seen in order.
- The broker down for a while (its port closed): the relay retries with
  backoff and catches up by itself once the port opens, nothing parked.
- Four relay processes started together over 2,000 messages: each message
  published exactly once (claims never overlap; the leases never expire
  here), every saga's messages in order, the work shared.

On SQLite, PostgreSQL and MariaDB. Nothing sleeps to wait for a race: the
broker's events, the processes' start line, and conditions polled with a
deadline.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import os
import signal
import sys
import typing
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from cqrs.outbox.models import OutboxMessage, OutboxRecord, OutboxStatus
from cqrs.saga.storage.models import NewSaga
from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage
from cqrs.saga.storage.sqlalchemy._outbox_schema import saga_outbox
from outbox_broker import ADDRESS_VARIABLE, LedgerServer, expected_order, first_seen_order, unknown_or_altered
from outbox_helpers import LEASE, done, open_storage

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
RELAY_PROCESS = TESTS / "outbox_relay_process.py"

pytestmark = pytest.mark.slow


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
            pytest.param("mariadb", marks=pytest.mark.mariadb)]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh SQLite, PostgreSQL and MariaDB database in turn."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def broker() -> typing.AsyncIterator[LedgerServer]:
    server = await LedgerServer().start()
    yield server
    server.release()
    await server.stop()


def environment(server: LedgerServer) -> dict[str, str]:
    """The relay processes' environment: this tree's code and the tests' broker module importable."""
    path = os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, ADDRESS_VARIABLE: server.address}


async def seed(url: str, sagas: int, per_saga: int) -> list[OutboxRecord]:
    """``sagas`` sagas with ``per_saga`` messages each, half written with the start, half with a checkpoint (as
    the engine writes them); returns the rows."""
    storage = await open_storage(url)
    assert isinstance(storage, SqlAlchemySagaStorage)
    try:
        for n in range(sagas):
            saga_id = uuid.uuid4()

            def messages(ks: range, saga_id: uuid.UUID = saga_id, n: int = n) -> list[OutboxMessage]:
                out = []
                for k in ks:
                    message_id = uuid.uuid4()
                    headers = {"message-id": str(message_id), "saga-id": str(saga_id), "correlation-id": f"c-{n}"}
                    out.append(OutboxMessage(message_id, "orders", f"s{n}-{k}", {"saga": n, "k": k}, headers))
                return out

            half = per_saga // 2
            lease = await storage.start_saga(NewSaga(saga_id, "order", {}, outbox=messages(range(half))), "seed", LEASE)
            assert lease is not None
            assert await storage.checkpoint(
                saga_id, lease, entry=done("one"), lease_seconds=LEASE, release=True,
                outbox=messages(range(half, per_saga)),
            )
        return await storage.list_outbox(limit=1_000_000)
    finally:
        await storage.close()


async def rows_of(url: str) -> list[OutboxRecord]:
    storage = await open_storage(url)
    try:
        return await storage.list_outbox(limit=1_000_000)
    finally:
        await storage.close()


async def until(condition: typing.Callable[[], typing.Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)


async def all_published(url: str) -> bool:
    return all(row.status is OutboxStatus.PUBLISHED for row in await rows_of(url))


async def cli_relay(server: LedgerServer, url: str, *options: str) -> asyncio.subprocess.Process:
    """``python -m cqrs.outbox`` publishing to ``server``."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cqrs.outbox", "--url", url, "--broker", "outbox_broker:TcpBroker",
        "--lease-seconds", "60", "--poll-interval", "0.02", "--log-level", "ERROR", *options,
        env=environment(server), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def terminated(proc: asyncio.subprocess.Process) -> str:
    """SIGTERM the relay and wait for it to stop; it must exit cleanly. Returns its stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return err.decode()


async def killed(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def assert_published_in_order(server: LedgerServer, rows: list[OutboxRecord]) -> None:
    """Every row was delivered, each delivery is exactly a row, and each saga's messages were first seen in order."""
    assert server.ids() == {str(r.message_id) for r in rows}
    assert unknown_or_altered(server.deliveries, rows) == []
    assert first_seen_order(server.deliveries) == expected_order(rows)


async def expire_claims(url: str) -> int:
    """Move every outbox claim's expiry into the past, as if its relay had died long ago; returns how many."""
    storage = await open_storage(url)
    assert isinstance(storage, SqlAlchemySagaStorage)
    try:
        past = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
        async with storage.engine.begin() as conn:
            result = await conn.execute(
                sa.update(saga_outbox).where(saga_outbox.c.owner.is_not(None)).values(lease_expires_at=past)
            )
            return int(result.rowcount)
    finally:
        await storage.close()


# -- (b) SIGKILL mid-publish --------------------------------------------------------------------------


async def test_a_relay_killed_mid_publish_loses_nothing_and_repeats_only_what_it_held(
    db_url: str, broker: LedgerServer
) -> None:
    rows = await seed(db_url, sagas=40, per_saga=5)
    broker.hold(after=60)
    first = await cli_relay(broker, db_url, "--batch-size", "16")
    try:
        await asyncio.wait_for(broker.holding.wait(), 60)
        first.kill()  # SIGKILL, with sends in flight
        assert await first.wait() == -signal.SIGKILL
    finally:
        await killed(first)
    at_kill = await rows_of(db_url)
    in_flight = {str(r.message_id) for r in at_kill if r.status is OutboxStatus.PENDING and r.owner}
    assert in_flight, "the relay held no claim when it was killed"
    assert sum(r.status is OutboxStatus.PUBLISHED for r in at_kill) < len(rows)

    assert await expire_claims(db_url) == len(in_flight)  # its claims lapse (rather than waiting 60 s)
    delivered_before = broker.ids()
    broker.release()
    second = await cli_relay(broker, db_url, "--batch-size", "16")
    try:
        await until(lambda: all_published(db_url), 120, "every row is published")
        await terminated(second)
    finally:
        await killed(second)

    assert_published_in_order(broker, rows)
    counts = collections.Counter(d.message_id for d in broker.deliveries)
    duplicates = {message_id for message_id, n in counts.items() if n > 1}
    # Exactly the claimed messages the broker had already received went out twice (the rest of the claims,
    # never sent, once), each under its own id with its own content (checked above).
    assert duplicates == in_flight & delivered_before
    assert duplicates, "nothing was in flight at the kill"
    assert max(counts.values()) == 2


# -- (c) the broker down for a while ---------------------------------------------------------------------


async def test_a_relay_catches_up_by_itself_after_the_broker_was_down(db_url: str, broker: LedgerServer) -> None:
    rows = await seed(db_url, sagas=20, per_saga=5)
    await broker.stop()  # the port is closed: every publish is refused
    relay = await cli_relay(
        broker, db_url, "--retry-attempts", "1000", "--retry-delay", "0.02", "--retry-backoff", "2",
        "--retry-max-delay", "0.2",
    )
    try:

        async def retrying() -> bool:
            return sum(r.attempts >= 3 for r in await rows_of(db_url)) >= 20

        await until(retrying, 60, "every saga's first message failed three times")
        assert broker.deliveries == []
        await broker.start()  # the broker is back, on the same port
        await until(lambda: all_published(db_url), 60, "every row is published")
        await terminated(relay)
    finally:
        await killed(relay)

    final = await rows_of(db_url)
    assert not [r for r in final if r.status is not OutboxStatus.PUBLISHED]
    assert_published_in_order(broker, rows)
    assert len(broker.deliveries) == len(rows)  # a refused connection delivered nothing


# -- (d) four relays racing ---------------------------------------------------------------------------------


async def test_four_relay_processes_publish_2000_messages_once_each_in_order(
    db_url: str, broker: LedgerServer
) -> None:
    rows = await seed(db_url, sagas=200, per_saga=10)
    assert len(rows) == 2000
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(RELAY_PROCESS), "--url", db_url, "--tag", str(n), env=environment(broker),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for n in range(4)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
        for proc in procs:  # the start line: every relay is connected before any claims
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        await broker.wait_for(lambda: len(broker.ids()) == 2000, 240)
        await until(lambda: all_published(db_url), 60, "every row is marked published")
        summaries = []
        for proc in procs:
            out, err = await asyncio.wait_for(proc.communicate(b"stop\n"), 60)
            assert proc.returncode == 0, err.decode()
            summaries.append(json.loads(out.decode().splitlines()[-1]))
    finally:
        for proc in procs:
            await killed(proc)

    assert_published_in_order(broker, rows)
    assert len(broker.deliveries) == 2000  # exactly once: no two relays ever held one row
    assert sum(s["published"] for s in summaries) == 2000
    assert all(s["failed"] == s["parked"] == 0 for s in summaries)
    shares = sorted(s["published"] for s in summaries)
    print(f"messages published per relay: {shares}")
    assert shares[0] > 0, f"a relay published nothing: {shares}"
