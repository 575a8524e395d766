"""``@trigger`` sources fed by the real RabbitMQ queue, Redis Streams consumer group and NATS durable consumer.

- The same idempotency as a webhook: one order's event, delivered twice
  under one message id and once more under another, starts its two sagas
  once; an event a trigger cannot read, or a body that is not JSON, is
  refused for good; a sender's ping is ignored.
- The same correlation and status: the sagas run under the message's
  ``correlation-id`` and `BrokerTriggers.status` reports them as the webhook
  status route does.
- A message is acknowledged only once its sagas are recorded: a consumer that
  fails after recording (as one killed before acknowledging) gets the message
  again, and a trigger without an idempotency key starts its saga once (its
  id derived from the message id); with the database unreachable (a proxy
  cut in front of PostgreSQL) nothing is acknowledged, and the redelivery
  after it is back records the saga.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import typing
import uuid

import di
import pytest
import sqlalchemy as sa

import cqrs
from broker_kits import TOPIC, Kit
from cqrs.config import SagaConfig, open_storage
from cqrs.integrations.brokers import BrokerTriggers
from cqrs.message_brokers.consumer import Received, consume
from cqrs.message_brokers.protocol import Message
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from cqrs.triggers import trigger
from django_project import webhook_sagas
from django_project.webhook_sagas import RUNS, SAGAS
from tcp_proxy import TcpProxy

NOTES: collections.Counter[str] = collections.Counter()


@dataclasses.dataclass
class NoteContext(SagaContext):
    text: str


class Noted(cqrs.Response):
    text: str


class Write(SagaStepHandler[NoteContext, Noted]):
    name = "write"

    async def act(self, context: NoteContext) -> SagaStepResult[NoteContext, Noted]:
        NOTES[context.text] += 1
        return self._generate_step_result(Noted(text=context.text))


class KeylessNoteSaga(Saga[NoteContext]):
    """Every event is a new note: its trigger has no idempotency key."""

    name = "broker_note"
    steps = [Write]

    @trigger(source="note")
    def from_note(self, event: dict[str, typing.Any]) -> NoteContext:
        return NoteContext(text=event["text"])


@pytest.fixture(autouse=True)
def _reset() -> None:
    webhook_sagas.reset()
    NOTES.clear()


def event_message(event: typing.Any, *, message_id: uuid.UUID | None = None, correlation_id: str | None = None,
                  body: bytes | None = None) -> Message:
    headers = {"correlation-id": correlation_id} if correlation_id else {}
    return Message("OrderCreated", TOPIC, event, message_id or uuid.uuid4(), payload_bytes=body, headers=headers)


async def publish(kit: Kit, *messages: Message) -> None:
    broker = kit.broker()
    try:
        for sent in messages:
            await broker.send_message(sent)
    finally:
        await broker.close()  # type: ignore[attr-defined]


async def until(condition: typing.Callable[[], typing.Awaitable[bool] | bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        holds = condition()
        if not isinstance(holds, bool):
            holds = await holds
        if holds:
            return
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


class Consuming:
    """A subscription feeding ``handler`` in the background until `stop`."""

    def __init__(self, kit: Kit, handler: typing.Callable[[Received], typing.Awaitable[None]]) -> None:
        self.stop_event = asyncio.Event()
        self.task = asyncio.ensure_future(consume(kit.subscription(), handler, stop=self.stop_event,
                                                  reconnect_delay=0.1))

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 30)


async def test_broker_events_start_sagas_with_a_webhooks_idempotency_correlation_and_status(
    broker_kit: Kit, sqlite_url: str
) -> None:
    config = SagaConfig(storage_url=sqlite_url, sagas=SAGAS, container=di.Container(), compensation_retry_delay=0.0)
    storage = await open_storage(sqlite_url)
    try:
        triggers = BrokerTriggers(config.mediator(storage), source="order_created")
        order = {"order_id": "O-1", "amount": 5}
        first = uuid.uuid4()
        messages = [
            event_message(order, message_id=first, correlation_id="corr-O-1"),
            event_message(order, message_id=first, correlation_id="corr-O-1"),  # the same message again
            event_message(order, correlation_id="corr-other"),  # the same order under another message id
            event_message({"amount": 1}),  # no idempotency field
            event_message(None, body=b"{not json"),
            event_message({"order_id": "ping", "test_event": True}),
        ]
        await publish(broker_kit, *messages)
        expected = len(messages) - (1 if broker_kit.kind == "nats" else 0)  # JetStream drops the duplicate
        consuming = Consuming(broker_kit, triggers)
        try:
            await until(lambda: triggers.accepted + triggers.duplicates + triggers.ignored + triggers.rejected
                        >= expected, 60, "every message was handled")
        finally:
            await consuming.stop()
        await triggers.wait_runs()

        assert (triggers.accepted, triggers.ignored, triggers.rejected) == (1, 1, 2)
        sagas = await storage.list_sagas(correlation_id="corr-O-1", limit=10)
        assert sorted(s.name for s in sagas) == ["webhook_audit", "webhook_order"]
        assert all(s.status == SagaStatus.COMPLETED for s in sagas)
        assert await storage.list_sagas(correlation_id="corr-other", limit=10) == []
        assert RUNS[("reserve", "O-1")] == RUNS[("charge", "O-1")] == 1
        status = await triggers.status("corr-O-1")
        assert status is not None and status["status"] == "completed" and len(status["sagas"]) == 2
        assert await triggers.status("corr-unknown") is None
        assert await broker_kit.unsettled() == 0
    finally:
        await storage.close()


async def test_a_message_redelivered_after_its_saga_was_recorded_starts_nothing_new(
    broker_kit: Kit, sqlite_url: str
) -> None:
    config = SagaConfig(storage_url=sqlite_url, sagas=[KeylessNoteSaga], container=di.Container())
    storage = await open_storage(sqlite_url)
    try:
        triggers = BrokerTriggers(config.mediator(storage), source="note")
        failed_once: set[str] = set()

        async def dies_before_acknowledging(received: Received) -> None:
            await triggers(received)  # the saga is recorded...
            if received.message_id not in failed_once:
                failed_once.add(received.message_id)
                raise ConnectionError("...and the consumer is gone before it acknowledged")

        await publish(broker_kit, event_message({"text": "hello"}), event_message({"text": "hello"}))
        consuming = Consuming(broker_kit, dies_before_acknowledging)
        try:
            await until(lambda: triggers.duplicates == 2, 60, "both messages were redelivered")
        finally:
            await consuming.stop()
        await triggers.wait_runs()
        assert triggers.accepted == 2  # two messages (two ids): two notes, each started once
        sagas = await storage.list_sagas(limit=10)
        assert len(sagas) == 2 and all(s.status == SagaStatus.COMPLETED for s in sagas)
        assert NOTES["hello"] == 2
        assert await broker_kit.unsettled() == 0
    finally:
        await storage.close()


@pytest.mark.postgres
async def test_nothing_is_acknowledged_while_the_database_is_unreachable(broker_kit: Kit, postgres_url: str) -> None:
    from conftest import PG_HOST, PG_PORT

    proxy = await TcpProxy(PG_HOST, PG_PORT).start()
    proxied = sa.make_url(postgres_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    config = SagaConfig(storage_url=proxied, sagas=[KeylessNoteSaga], container=di.Container())
    storage = await open_storage(proxied)
    attempts: list[str] = []
    try:
        triggers = BrokerTriggers(config.mediator(storage), source="note", run=False)

        async def handler(received: Received) -> None:
            attempts.append(received.message_id)
            await triggers(received)

        await proxy.cut()
        await publish(broker_kit, event_message({"text": "while down"}))
        consuming = Consuming(broker_kit, handler)
        try:
            await until(lambda: len(attempts) >= 2, 60, "the message was redelivered after a failed record")
            assert triggers.accepted == 0
            await proxy.restore()
            await until(lambda: triggers.accepted == 1, 60, "the saga was recorded once the database was back")
        finally:
            await consuming.stop()
        sagas = await storage.list_sagas(limit=10)
        assert [s.status for s in sagas] == [SagaStatus.PENDING]  # recorded (run=False: recovery runs it)
        assert len(set(attempts)) == 1
        assert await broker_kit.unsettled() == 0
    finally:
        await storage.close()
        await proxy.close()


# -- without a broker: the handler itself ------------------------------------------------------------


def received(event: typing.Any, message_id: str, topic: str = TOPIC) -> Received:
    import json

    return Received(message_id, topic, json.dumps(event).encode(), {"message-id": message_id})


async def test_a_keyless_trigger_starts_one_saga_per_message_id_and_a_webhook_one_per_delivery() -> None:
    from cqrs.saga.storage.memory import MemorySagaStorage
    from cqrs.triggers import TriggerRouter

    storage = MemorySagaStorage()
    mediator = SagaConfig(sagas=[KeylessNoteSaga], container=di.Container()).mediator(storage)
    router = TriggerRouter([KeylessNoteSaga])
    by_message = [await router.accept(mediator, "note", {"text": "a"}, delivery_id="m-1") for _ in range(2)]
    assert [a.status for a in by_message] == ["accepted", "duplicate"]
    assert by_message[0].sagas[0].saga_id == by_message[1].sagas[0].saga_id
    unkeyed = [await router.accept(mediator, "note", {"text": "a"}) for _ in range(2)]
    assert [a.status for a in unkeyed] == ["accepted", "accepted"]  # a webhook's keyless deliveries: two sagas
    assert len(await storage.list_sagas(limit=10)) == 3


async def test_the_source_may_be_chosen_per_message_and_an_unknown_one_is_refused_at_once() -> None:
    from cqrs.saga.storage.memory import MemorySagaStorage
    from cqrs.triggers import UnknownSourceError

    storage = MemorySagaStorage()
    mediator = SagaConfig(sagas=SAGAS, container=di.Container(), compensation_retry_delay=0.0).mediator(storage)
    with pytest.raises(UnknownSourceError):
        BrokerTriggers(mediator, source="nope")
    triggers = BrokerTriggers(mediator, source=lambda message: message.topic.replace("-", "_"))
    await triggers(received({"order_id": "O-9", "amount": 2}, "m-9", topic="order-created"))
    await triggers(received({"invoice": {"id": "I-9", "amount": 3}}, "m-10", topic="payment-due"))
    await triggers.wait_runs()
    assert triggers.accepted == 2
    assert sorted(s.name for s in await storage.list_sagas(limit=10)) == [
        "webhook_audit", "webhook_order", "webhook_payment",
    ]
    with pytest.raises(ValueError, match="name the source"):
        await triggers.status("anything")
