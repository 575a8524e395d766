"""The relay in-process, over every storage: order, retries with backoff, parking and requeue, timeouts, the loop.

The broker is `MemoryBroker` (what it got, and errors to raise per message
name). Time moves through `advance`; the loop tests wait for events.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import typing

import pytest

from cqrs.message_brokers.protocol import Message
from cqrs.outbox import OutboxRelay, OutboxStatus, run_relay
from cqrs.outbox.relay import DEFAULT_RELAY_RETRY, broker_message
from cqrs.outbox.runner import load_object, open_broker
from cqrs.saga.retry import RetryPolicy
from outbox_broker import MemoryBroker
from outbox_helpers import Storage, advance, message, names, open_storage, started

RETRY = RetryPolicy(attempts=3, delay=10.0, backoff=2.0, max_delay=100.0)


@pytest.fixture
async def storage(storage_url: str) -> typing.AsyncIterator[Storage]:
    store = await open_storage(storage_url)
    yield store
    await store.close()


def relay_for(storage: Storage, broker: MemoryBroker, **options: typing.Any) -> OutboxRelay:
    return OutboxRelay(storage, broker, **{"retry": RETRY, "owner": "relay-1", **options})


async def test_a_relay_publishes_each_sagas_messages_in_order_with_their_ids(storage: Storage) -> None:
    first = message("a1", order="o-1")
    a, _ = await started(storage, first, message("a2"), message("a3"))
    await started(storage, message("b1"), message("b2"))
    broker = MemoryBroker()
    relay = relay_for(storage, broker, batch_size=10)

    assert await relay.drain() == 5
    assert broker.names() == ["a1", "b1", "a2", "b2", "a3"]  # one row per saga per pass
    sent = broker.sent[0]
    assert (sent.message_id, sent.topic, sent.payload) == (first.message_id, "orders", {"order": "o-1"})
    assert sent.headers == {"message-id": str(first.message_id)}
    assert await names(storage, status=OutboxStatus.PUBLISHED) == ["a1", "a2", "a3", "b1", "b2"]
    assert (relay.published, relay.failed, relay.parked) == (5, 0, 0)
    assert await storage.outbox_backlog() == 0
    assert await relay.run_once() == 0
    assert [r.saga_id for r in await storage.list_outbox(saga_id=a)] == [a] * 3


async def test_a_failing_message_is_retried_with_backoff_and_holds_its_saga_back(storage: Storage) -> None:
    await started(storage, message("flaky"), message("after"))
    await started(storage, message("other"))
    broker = MemoryBroker()
    broker.failing["flaky"] = ConnectionError("broker down")
    relay = relay_for(storage, broker)

    assert await relay.drain() == 2
    assert broker.names() == ["other"]
    [row] = await storage.list_outbox(status=OutboxStatus.PENDING, limit=1)
    assert (row.name, row.attempts, row.error) == ("flaky", 1, "ConnectionError: broker down")
    assert row.next_attempt_at is not None and row.created_at is not None
    assert abs((row.next_attempt_at - row.created_at).total_seconds() - 10.0) < 1  # RETRY.delay

    await advance(storage, 11)
    assert await relay.drain() == 1  # tried again: the second retry waits twice as long
    [row] = await storage.list_outbox(status=OutboxStatus.PENDING, limit=1)
    assert row.attempts == 2 and row.next_attempt_at is not None and row.created_at is not None
    assert abs((row.next_attempt_at - row.created_at).total_seconds() - (11 + 20.0)) < 1

    del broker.failing["flaky"]
    await advance(storage, 21)
    assert await relay.drain() == 2
    assert broker.names() == ["other", "flaky", "after"]
    assert (relay.published, relay.failed, relay.parked) == (3, 2, 0)


async def test_a_message_that_keeps_failing_is_parked_and_requeue_sends_it(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    poison = message("poison")
    await started(storage, poison, message("after"))
    await started(storage, message("other"))
    broker = MemoryBroker()
    broker.failing["poison"] = ValueError("payload rejected")
    relay = relay_for(storage, broker, retry=RetryPolicy(attempts=3, delay=0.0))

    with caplog.at_level(logging.ERROR, logger="cqrs.outbox"):
        await relay.drain()
    assert broker.attempts["poison"] == 3
    assert broker.names() == ["other"]  # "after" waits behind the parked message
    [parked] = await storage.list_outbox(status=OutboxStatus.PARKED)
    assert (parked.message_id, parked.attempts, parked.error) == (poison.message_id, 3, "ValueError: payload rejected")
    assert (relay.failed, relay.parked) == (2, 1)
    assert f"Outbox message {poison.message_id}" in caplog.text and "parked after 3 failed attempts" in caplog.text
    await advance(storage, 3600)
    assert await relay.drain() == 0  # parked stays parked

    del broker.failing["poison"]
    assert await storage.requeue_outbox(poison.message_id)
    assert await relay.drain() == 2
    assert broker.names() == ["other", "poison", "after"]
    assert await storage.list_outbox(status=OutboxStatus.PARKED) == []


async def test_an_error_the_policy_does_not_retry_parks_at_once(storage: Storage) -> None:
    await started(storage, message("bad"))
    broker = MemoryBroker()
    broker.failing["bad"] = TypeError("not JSON")
    relay = relay_for(storage, broker, retry=RetryPolicy(attempts=5, delay=0.0, retry_on=(ConnectionError,)))
    await relay.drain()
    assert broker.attempts["bad"] == 1
    assert await names(storage, status=OutboxStatus.PARKED) == ["bad"]


async def test_a_publish_that_hangs_fails_after_the_timeout(storage: Storage) -> None:
    await started(storage, message("stuck"))
    never = asyncio.Event()

    class Hanging(MemoryBroker):
        async def send_message(self, message: Message) -> None:
            await never.wait()

    relay = relay_for(storage, Hanging(), publish_timeout=0.01)
    assert await relay.run_once() == 1
    [row] = await storage.list_outbox()
    assert (row.status, row.attempts) == (OutboxStatus.PENDING, 1)
    assert row.error == "TimeoutError: the broker did not take the message within 0.01s"


async def test_a_relay_whose_claim_expired_does_not_mark_the_row(storage: Storage) -> None:
    """A relay that took longer than its lease: another relay has the row now; the late marks change nothing."""
    await started(storage, message("slow"))
    gate, entered = asyncio.Event(), asyncio.Event()

    class Slow(MemoryBroker):
        async def send_message(self, message: Message) -> None:
            entered.set()
            await gate.wait()
            raise ConnectionError("gave up")

    slow = relay_for(storage, Slow(), lease_seconds=10, owner="slow")
    pass_ = asyncio.ensure_future(slow.run_once())
    await entered.wait()
    await advance(storage, 11)
    fast = MemoryBroker()
    assert await relay_for(storage, fast, owner="fast").drain() == 1
    gate.set()
    assert await pass_ == 1
    assert slow.failed == slow.parked == 0  # its mark_failed matched nothing
    [row] = await storage.list_outbox()
    assert (row.status, row.attempts, row.error) == (OutboxStatus.PUBLISHED, 0, None)


async def test_the_relay_loop_publishes_a_sagas_messages_back_to_back_and_stops(storage: Storage) -> None:
    """After a pass that claimed rows the next starts at once: a saga's three messages need three passes, which
    must not wait for the (hour-long) poll interval."""
    await started(storage, message("m1"), message("m2"), message("m3"))
    done = asyncio.Event()

    class Watching(MemoryBroker):
        async def send_message(self, message: Message) -> None:
            await super().send_message(message)
            if len(self.sent) == 3:
                done.set()

    broker = Watching()
    relay = relay_for(storage, broker, poll_interval=3600)
    task = asyncio.ensure_future(relay.run())
    await asyncio.wait_for(done.wait(), 30)
    relay.stop()
    await asyncio.wait_for(task, 30)
    assert broker.names() == ["m1", "m2", "m3"]


async def test_wake_starts_a_pass_without_waiting_for_the_poll_interval(storage: Storage) -> None:
    idle, arrived = asyncio.Event(), asyncio.Event()

    class Watched:
        """The storage; tells when a claim found nothing (the relay then waits for its poll interval)."""

        def __getattr__(self, name: str) -> typing.Any:
            return getattr(storage, name)

        async def claim_outbox(self, owner: str, lease_seconds: float, *, limit: int) -> typing.Any:
            rows = await storage.claim_outbox(owner, lease_seconds, limit=limit)
            if not rows:
                idle.set()
            return rows

    class Signalling(MemoryBroker):
        async def send_message(self, message: Message) -> None:
            await super().send_message(message)
            arrived.set()

    broker = Signalling()
    relay = relay_for(Watched(), broker, poll_interval=3600)  # type: ignore[arg-type]
    task = asyncio.ensure_future(relay.run())
    await asyncio.wait_for(idle.wait(), 30)
    await started(storage, message("late"))
    relay.wake()
    await asyncio.wait_for(arrived.wait(), 30)
    relay.stop()
    await asyncio.wait_for(task, 30)
    assert broker.names() == ["late"]


async def test_a_failing_pass_is_logged_and_the_loop_goes_on(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    await started(storage, message("m"))
    sent = asyncio.Event()

    class Flaky:
        """The storage, whose first claim fails (the database unreachable)."""

        def __init__(self) -> None:
            self.calls = 0

        def __getattr__(self, name: str) -> typing.Any:
            return getattr(storage, name)

        async def claim_outbox(self, owner: str, lease_seconds: float, *, limit: int) -> typing.Any:
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("database unreachable")
            return await storage.claim_outbox(owner, lease_seconds, limit=limit)

    class Signalling(MemoryBroker):
        async def send_message(self, message: Message) -> None:
            await super().send_message(message)
            sent.set()

    relay = OutboxRelay(Flaky(), Signalling(), poll_interval=0.01)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="cqrs.outbox"):
        task = asyncio.ensure_future(relay.run())
        await asyncio.wait_for(sent.wait(), 30)
        relay.stop()
        await asyncio.wait_for(task, 30)
    assert "Outbox relay pass failed" in caplog.text and "database unreachable" in caplog.text
    assert relay.published == 1


def test_relay_options_are_checked() -> None:
    storage, broker = object(), MemoryBroker()
    for options in ({"batch_size": 0}, {"lease_seconds": 0}, {"publish_timeout": 30.0}, {"publish_timeout": 0}):
        with pytest.raises(ValueError):
            OutboxRelay(storage, broker, **options)  # type: ignore[arg-type]
    relay = OutboxRelay(storage, broker)  # type: ignore[arg-type]
    assert relay.publish_timeout == 15.0 and relay.retry == DEFAULT_RELAY_RETRY
    assert relay.owner.startswith("relay:") and relay.owner != OutboxRelay(storage, broker).owner  # type: ignore[arg-type]


def test_a_broker_message_carries_the_row_id_and_headers() -> None:
    from cqrs.outbox.models import OutboxRecord

    m = message("shipped", order="o-9")
    row = OutboxRecord(7, m.message_id, m.message_id, "orders", "shipped", {"order": "o-9"}, {"saga-id": "x"},
                       OutboxStatus.PENDING)
    sent = broker_message(row)
    assert (sent.message_id, sent.message_name, sent.topic, sent.payload, sent.headers) == (
        m.message_id, "shipped", "orders", {"order": "o-9"}, {"saga-id": "x"},
    )
    assert sent.headers is not row.headers


# -- run_relay ------------------------------------------------------------------------------------------


class ContextBroker(MemoryBroker):
    """A broker that must be entered before use (as a connection-holding adapter is)."""

    entered = exited = 0

    async def __aenter__(self) -> ContextBroker:
        type(self).entered += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        type(self).exited += 1


async def make_broker() -> ContextBroker:
    return ContextBroker()


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
            pytest.param("mariadb", marks=pytest.mark.mariadb)]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh SQLite, PostgreSQL, MariaDB database in turn: what a relay process is given."""
    return str(request.getfixturevalue(f"{request.param}_url"))


async def test_run_relay_once_publishes_what_is_due_through_a_broker_it_opens(database_url: str) -> None:
    storage = await open_storage(database_url)
    try:
        await started(storage, message("m1"), message("m2"))
        ContextBroker.entered = ContextBroker.exited = 0
        relay = await run_relay(database_url, f"{__name__}:make_broker", once=True)
        assert (relay.published, ContextBroker.entered, ContextBroker.exited) == (2, 1, 1)
        assert await storage.outbox_backlog() == 0
    finally:
        await storage.close()


async def test_run_relay_runs_until_stopped(storage: Storage) -> None:
    await started(storage, message("m"))
    broker = MemoryBroker()
    stop = asyncio.Event()
    task = asyncio.ensure_future(run_relay(storage, lambda: broker, stop=stop, poll_interval=3600))
    while not broker.sent:  # polled: the relay publishes on its first pass
        await asyncio.sleep(0.01)
    stop.set()
    relay = await asyncio.wait_for(task, 30)
    assert relay.published == 1
    assert await storage.outbox_backlog() == 0  # the storage it was given is left open


async def test_brokers_are_found_by_name_and_refused_when_they_cannot_send() -> None:
    assert load_object("outbox_broker:MemoryBroker") is MemoryBroker
    assert load_object("cqrs.outbox.relay:OutboxRelay.run") is OutboxRelay.run
    with pytest.raises(ValueError, match=r"module:object"):
        load_object("outbox_broker")
    async with open_broker(MemoryBroker) as made:
        assert isinstance(made, MemoryBroker)
    instance = MemoryBroker()
    async with open_broker(instance) as made:
        assert made is instance
    with pytest.raises(TypeError, match="not a message broker"):
        async with open_broker(lambda: object()):
            pass


def test_relay_retry_defaults_back_off_to_five_minutes() -> None:
    assert [DEFAULT_RELAY_RETRY.delay_before(n) for n in (1, 2, 3, 9)] == [1.0, 2.0, 4.0, 256.0]
    assert DEFAULT_RELAY_RETRY.delay_before(10) == 300.0
    assert datetime.timedelta(seconds=DEFAULT_RELAY_RETRY.max_delay) == datetime.timedelta(minutes=5)
