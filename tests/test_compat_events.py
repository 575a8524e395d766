"""Events as python-cqrs has them (issue 12, point 2): types, fields, serialisation, handlers, delivery.

``cqrs.Event``, ``DomainEvent`` and ``NotificationEvent`` are frozen pydantic
models (python-cqrs 4's defaults), ``DC*`` their frozen dataclass flavours
(python-cqrs 5's); ``EventHandler``, ``EventMap`` and ``EventEmitter`` behave
as python-cqrs documents them. Events a saga step produces reach the handlers
bound for them (and notification events the message broker) once the step is
recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import typing
import uuid

import di
import pydantic
import pytest

import cqrs
from cqrs.events.event import (
    DEFAULT_OUTPUT_TOPIC,
    DCDomainEvent,
    DCEvent,
    DCNotificationEvent,
    DomainEvent,
    IDomainEvent,
    IEvent,
    INotificationEvent,
    NotificationEvent,
)
from cqrs.events.event_emitter import EventEmitter
from cqrs.events.event_handler import EventHandler
from cqrs.events.map import EventMap
from cqrs.message_brokers.protocol import Message, MessageBroker
from cqrs.response import DCResponse, Response
from cqrs.saga import bootstrap
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStepStatus
from cqrs.saga.storage.memory import MemorySagaStorage

# -- event types ---------------------------------------------------------------------------------


class OrderPlaced(cqrs.Event, frozen=True):  # the examples' spelling
    order_id: str
    items: list[str] = []


class OrderPaid(DomainEvent, frozen=True):
    order_id: str
    amount: float


class ExpressOrderPaid(OrderPaid, frozen=True):
    pass


class Shipped(DCEvent):
    order_id: str
    carrier: str = "post"


class Refunded(DCDomainEvent):
    order_id: str


def test_a_plain_event_is_a_frozen_pydantic_model_with_only_its_own_fields() -> None:
    event = OrderPlaced(order_id="1", items=["a"])
    assert isinstance(event, IEvent) and isinstance(event, pydantic.BaseModel)
    assert not isinstance(event, IDomainEvent) and not isinstance(event, INotificationEvent)
    assert not hasattr(event, "event_id") and not hasattr(event, "event_timestamp")
    assert event.to_dict() == {"order_id": "1", "items": ["a"]}
    assert OrderPlaced.from_dict(**event.to_dict()) == event  # from_dict takes keyword arguments
    assert OrderPlaced.from_dict(order_id="2", unknown="ignored") == OrderPlaced(order_id="2")
    with pytest.raises(pydantic.ValidationError):
        event.order_id = "changed"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        OrderPlaced()  # type: ignore[call-arg]


def test_a_domain_event_is_marked_as_one_and_serialises_python_values() -> None:
    event = OrderPaid(order_id="1", amount=9.5)
    assert isinstance(event, IDomainEvent) and isinstance(event, IEvent)
    assert isinstance(ExpressOrderPaid(order_id="2", amount=1), OrderPaid)
    assert event.to_dict() == {"order_id": "1", "amount": 9.5}
    assert OrderPaid.from_dict(order_id="1", amount="9.5") == event


def test_a_notification_event_has_an_id_a_timestamp_a_name_a_topic_and_a_payload() -> None:
    event = NotificationEvent[dict[str, int]](event_name="order.paid", payload={"amount": 3})
    other = NotificationEvent[dict[str, int]](event_name="order.paid", payload={"amount": 3})
    assert isinstance(event, INotificationEvent) and isinstance(event, IEvent)
    assert isinstance(event.event_id, uuid.UUID) and event.event_id != other.event_id
    assert isinstance(event.event_timestamp, datetime.datetime)
    assert event.event_timestamp.utcoffset() == datetime.timedelta(0)  # UTC (python-cqrs: naive local time)
    assert event.topic == DEFAULT_OUTPUT_TOPIC == "output_topic"
    data = event.to_dict()
    assert data == {
        "payload": {"amount": 3},
        "event_id": event.event_id,
        "event_timestamp": event.event_timestamp,
        "event_name": "order.paid",
        "topic": "output_topic",
    }
    assert type(event).from_dict(**data) == event
    assert hash(event) == hash(event.event_id)
    assert NotificationEvent(event_name="x", payload=1, topic="orders").topic == "orders"
    with pytest.raises(pydantic.ValidationError):
        NotificationEvent(payload={})  # type: ignore[call-arg]  # event_name is required
    with pytest.raises(pydantic.ValidationError):
        event.topic = "other"  # type: ignore[misc]


def test_dataclass_events_become_frozen_dataclasses_by_themselves() -> None:
    event = Shipped("1")  # positional, as python-cqrs 5's dataclass events
    assert dataclasses.is_dataclass(event) and isinstance(event, IEvent)
    assert event == Shipped(order_id="1", carrier="post")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.carrier = "ups"  # type: ignore[misc]
    assert event.to_dict() == {"order_id": "1", "carrier": "post"}
    assert Shipped.from_dict(**event.to_dict()) == event
    assert isinstance(Refunded("1"), IDomainEvent)
    with pytest.raises(TypeError):  # frozen all the way down, as in python-cqrs 5

        class Mutable(DCEvent, frozen=False):
            note: str


def test_a_dataclass_notification_event_is_keyword_only_with_the_same_fields() -> None:
    class Paid(DCNotificationEvent[dict[str, float]]):
        pass

    event = Paid(event_name="order.paid", payload={"amount": 1.0})
    assert isinstance(event, INotificationEvent)
    assert set(event.to_dict()) == {"event_name", "payload", "event_id", "event_timestamp", "topic"}
    assert Paid.from_dict(**event.to_dict()) == event
    assert hash(event) == hash(event.event_id)
    with pytest.raises(TypeError):
        Paid("order.paid", {"amount": 1.0})  # type: ignore[misc]


def test_responses_serialise_as_python_cqrs_documents() -> None:
    class Reserved(Response):
        reservation_id: str

    assert Response().to_dict() == {}  # a response without fields is valid
    reserved = Reserved(reservation_id="r-1")
    reserved.reservation_id = "r-2"  # not frozen
    assert reserved.to_dict() == {"reservation_id": "r-2"}
    assert Reserved.from_dict(reservation_id="r-3") == Reserved(reservation_id="r-3")

    class Charged(DCResponse):
        payment_id: str

    charged = Charged("p-1")
    assert dataclasses.is_dataclass(charged)
    assert charged.to_dict() == {"payment_id": "p-1"}
    assert Charged.from_dict(payment_id="p-1") == charged


# -- EventHandler, EventMap ------------------------------------------------------------------------


class Journal:
    """What the handlers saw (bound as a singleton in the tests' containers)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, typing.Any]] = []


def test_event_handler_is_abstract_and_has_no_follow_ups_by_default() -> None:
    with pytest.raises(TypeError):
        EventHandler()  # type: ignore[abstract]

    class Handler(EventHandler[OrderPaid]):
        async def handle(self, event: OrderPaid) -> None:
            return None

    assert tuple(Handler().events) == ()


def test_event_map_is_a_dict_of_event_types_to_handler_lists() -> None:
    class First(EventHandler[OrderPaid]):
        async def handle(self, event: OrderPaid) -> None:
            return None

    class Second(First):
        pass

    event_map = EventMap()
    event_map.bind(OrderPaid, First)
    event_map.bind(OrderPaid, Second)
    event_map.bind(OrderPlaced, First)
    assert isinstance(event_map, dict)
    assert list(event_map) == [OrderPaid, OrderPlaced]
    assert event_map[OrderPaid] == [First, Second]
    assert event_map.get(Shipped) is None
    with pytest.raises(KeyError, match="already bound"):
        event_map.bind(OrderPaid, First)
    with pytest.raises(TypeError):
        del event_map[OrderPaid]


# -- EventEmitter ----------------------------------------------------------------------------------


class RecordingBroker(MessageBroker):
    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def send_message(self, message: Message) -> None:
        self.sent.append(message)


def journal_container(journal: Journal) -> di.Container:
    container = di.Container()
    container.bind(di.bind_by_type(di.dependent.Dependent(lambda: journal, scope="request"), Journal))
    return container


class PaidHandler(EventHandler[OrderPaid]):
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._follow_ups: list[IEvent] = []

    async def handle(self, event: OrderPaid) -> None:
        self.journal.seen.append(("paid", event.order_id))
        self._follow_ups.append(Refunded(event.order_id))

    @property
    def events(self) -> list[IEvent]:
        return list(self._follow_ups)


class FailingPaidHandler(EventHandler[OrderPaid]):
    async def handle(self, event: OrderPaid) -> None:
        raise RuntimeError("handler down")


class RefundedHandler(EventHandler[Refunded]):
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def handle(self, event: Refunded) -> None:
        self.journal.seen.append(("refunded", event.order_id))


async def test_the_emitter_runs_every_bound_handler_and_returns_their_follow_ups(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal()
    event_map = EventMap()
    event_map.bind(OrderPaid, FailingPaidHandler)
    event_map.bind(OrderPaid, PaidHandler)
    emitter = EventEmitter(event_map, journal_container(journal))
    follow_ups = await emitter.emit(OrderPaid(order_id="1", amount=2))
    # A failing handler is logged and does not stop the others (python-cqrs logs and goes on too).
    assert journal.seen == [("paid", "1")]
    assert list(follow_ups) == [Refunded("1")]
    assert "handler down" in caplog.text


async def test_the_emitter_sends_notification_events_to_the_broker() -> None:
    broker = RecordingBroker()
    emitter = EventEmitter(EventMap(), di.Container(), broker)
    event = NotificationEvent[dict[str, str]](event_name="order.paid", payload={"id": "1"}, topic="orders")
    assert list(await emitter.emit(event)) == []
    (message,) = broker.sent
    assert message.message_id == event.event_id
    assert message.topic == "orders"
    assert message.payload == event.to_dict()
    assert message.message_name == type(event).__name__

    with pytest.raises(RuntimeError, match="message broker"):
        await EventEmitter(EventMap(), di.Container()).emit(event)


async def test_the_emitter_drops_an_event_nothing_is_bound_to() -> None:
    emitter = EventEmitter(EventMap(), di.Container(), RecordingBroker())
    assert list(await emitter.emit(OrderPlaced(order_id="1"))) == []
    assert emitter.message_broker is not None
    assert typing.cast(RecordingBroker, emitter.message_broker).sent == []


# -- step events reach the handlers bound for them -------------------------------------------------


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    amount: float = 10.0


class Paid(Response):
    payment_id: str


class PayStep(SagaStepHandler[OrderContext, Paid]):
    """Produces one event of each kind."""

    def __init__(self) -> None:
        self._events: list[IEvent] = []

    @property
    def events(self) -> list[IEvent]:
        return list(self._events)

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Paid]:
        self._events.extend(
            [
                OrderPlaced(order_id=context.order_id),
                ExpressOrderPaid(order_id=context.order_id, amount=context.amount),
                Shipped(context.order_id),
                NotificationEvent[dict[str, str]](event_name="order.paid", payload={"id": context.order_id}),
            ]
        )
        return self._generate_step_result(Paid(payment_id=f"p-{context.order_id}"))


class PaymentSaga(Saga[OrderContext]):
    steps = [PayStep]


class PlacedHandler(EventHandler[OrderPlaced]):
    def __init__(self, journal: Journal, storage: MemorySagaStorage) -> None:
        self.journal = journal
        self.storage = storage

    async def handle(self, event: OrderPlaced) -> None:
        self.journal.seen.append(("placed", event.order_id))
        # Handed on once the step is recorded: the storage already says so.
        (saga,) = await self.storage.list_sagas()
        rows = await self.storage.get_step_history(saga.saga_id)
        self.journal.seen.append(("recorded", [(r.step_name, r.status) for r in rows]))


class ShippedHandler(EventHandler[Shipped]):
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def handle(self, event: Shipped) -> None:
        self.journal.seen.append(("shipped", event.order_id))


class AnyEventHandler(EventHandler[IEvent]):
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def handle(self, event: IEvent) -> None:
        self.journal.seen.append(("any", type(event).__name__))


async def test_step_events_of_every_kind_reach_their_handlers_and_the_broker() -> None:
    journal = Journal()
    storage = MemorySagaStorage()
    container = journal_container(journal)
    container.bind(di.bind_by_type(di.dependent.Dependent(lambda: storage, scope="request"), MemorySagaStorage))
    broker = RecordingBroker()

    def events_mapper(event_map: EventMap) -> None:
        event_map.bind(OrderPlaced, PlacedHandler)
        event_map.bind(OrderPaid, PaidHandler)  # bound for the base class: gets ExpressOrderPaid
        event_map.bind(Refunded, RefundedHandler)  # a follow-up event of PaidHandler
        event_map.bind(Shipped, ShippedHandler)

    mediator = bootstrap.bootstrap(
        di_container=container,
        message_broker=broker,
        sagas_mapper=lambda saga_map: saga_map.bind(OrderContext, PaymentSaga),
        domain_events_mapper=events_mapper,
        saga_storage=storage,
    )
    results = [result async for result in mediator.stream(OrderContext(order_id="7"))]
    assert [r.response for r in results] == [Paid(payment_id="p-7")]
    assert journal.seen == [
        ("placed", "7"),
        ("recorded", [("PayStep", SagaStepStatus.COMPLETED)]),
        ("paid", "7"),
        ("shipped", "7"),
        ("refunded", "7"),
    ]
    (message,) = broker.sent
    assert message.payload["event_name"] == "order.paid"
    assert message.payload["payload"] == {"id": "7"}


async def test_step_events_are_handed_on_before_the_stream_yields_the_step() -> None:
    journal = Journal()
    mediator = bootstrap.bootstrap(
        di_container=journal_container(journal),
        sagas_mapper=lambda saga_map: saga_map.bind(OrderContext, PaymentSaga),
        domain_events_mapper=lambda event_map: event_map.bind(Shipped, ShippedHandler),
    )
    async for _ in mediator.stream(OrderContext(order_id="8")):
        assert journal.seen == [("shipped", "8")]


async def test_a_handler_bound_to_the_event_interface_sees_every_step_event() -> None:
    journal = Journal()
    mediator = bootstrap.bootstrap(
        di_container=journal_container(journal),
        message_broker=RecordingBroker(),
        sagas_mapper=lambda saga_map: saga_map.bind(OrderContext, PaymentSaga),
        domain_events_mapper=lambda event_map: event_map.bind(IEvent, AnyEventHandler),
    )
    await asyncio.wait_for(mediator.run(OrderContext(order_id="9")), 10)
    assert [name for kind, name in journal.seen if kind == "any"] == [
        "OrderPlaced",
        "ExpressOrderPaid",
        "Shipped",
        "PydanticNotificationEvent[dict[str, str]]",
    ]
