"""`SagaMediator` and `bootstrap` with python-cqrs's parameters, and `ScopeStrategy` (issue 12, points 5 and 6).

A mediator built directly with python-cqrs's keywords (or positionally, in its
order) runs sagas as python-cqrs's does; every keyword python-cqrs's saga
``bootstrap`` accepts means what it means there; ``execute`` is python-cqrs
5's name for ``stream``; and the three scope strategies open the container
scopes python-cqrs 5 documents (checked with a container that counts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import typing
import uuid

import di
import pytest
from di import dependent

import cqrs
from cqrs.container.scope import ScopeStrategy
from cqrs.dispatcher.exceptions import SagaDoesNotExist
from cqrs.events import EventEmitter, EventHandler, EventMap
from cqrs.events.event import DomainEvent, NotificationEvent
from cqrs.message_brokers.protocol import Message, MessageBroker
from cqrs.requests.map import SagaMap
from cqrs.response import Response
from cqrs.saga import bootstrap
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.saga.storage.protocol import SagaStorage


@pytest.fixture
async def storage(storage_url: str) -> typing.AsyncIterator[SagaStorage]:
    """A fresh, empty storage of each kind: memory, SQLite, PostgreSQL, MariaDB."""
    if storage_url == "memory://":
        store: SagaStorage = MemorySagaStorage()
    else:
        from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

        sql = SqlAlchemySagaStorage.from_url(storage_url)
        await sql.create_tables()
        store = sql
    yield store
    await store.close()


# -- a saga that produces events -------------------------------------------------------------------


class Ping(DomainEvent, frozen=True):
    number: int


class Probe:
    """Counts handlers running at once; shared by the handlers of one test."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.handled: list[int] = []
        self.compensations = 0


class PingHandler(EventHandler[Ping]):
    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    async def handle(self, event: Ping) -> None:
        self.probe.running += 1
        self.probe.peak = max(self.probe.peak, self.probe.running)
        await asyncio.sleep(0.02)
        self.probe.running -= 1
        self.probe.handled.append(event.number)


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    fail: bool = False


class Done(Response):
    order_id: str


class Announce(SagaStepHandler[OrderContext, Done]):
    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self._events: list[cqrs.IEvent] = []

    @property
    def events(self) -> list[cqrs.IEvent]:
        return list(self._events)

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Done]:
        self._events.extend(Ping(number=n) for n in range(3))
        self._events.append(NotificationEvent[dict[str, str]](event_name="order.announced", payload={}))
        return self._generate_step_result(Done(order_id=context.order_id))

    async def compensate(self, context: OrderContext) -> None:
        self.probe.compensations += 1
        if self.probe.compensations < 2:
            raise ConnectionError("retry me")


class MaybeFail(SagaStepHandler[OrderContext, None]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
        if context.fail:
            raise ValueError("step failed")
        return self._generate_step_result(None)


class AnnounceSaga(Saga[OrderContext]):
    steps = [Announce, MaybeFail]


class RecordingBroker(MessageBroker):
    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def send_message(self, message: Message) -> None:
        self.sent.append(message)


def probe_container(probe: Probe) -> di.Container:
    container = di.Container()
    container.bind(di.bind_by_type(dependent.Dependent(lambda: probe, scope="request"), Probe))
    return container


def saga_map() -> SagaMap:
    mapping = SagaMap()
    mapping.bind(OrderContext, AnnounceSaga)
    return mapping


def ping_map() -> EventMap:
    event_map = EventMap()
    event_map.bind(Ping, PingHandler)
    return event_map


# -- SagaMediator built directly -------------------------------------------------------------------


async def test_a_mediator_built_with_python_cqrs_keywords_runs_sagas(storage: SagaStorage) -> None:
    probe, broker = Probe(), RecordingBroker()
    container = probe_container(probe)
    event_map = ping_map()
    mediator = SagaMediator(
        saga_map=saga_map(),
        container=container,
        event_emitter=EventEmitter(event_map, container, broker),
        middleware_chain=None,
        event_map=event_map,
        max_concurrent_event_handlers=3,
        concurrent_event_handle_enable=True,
        storage=storage,
        compensation_retry_count=2,
        compensation_retry_delay=0.0,
        compensation_retry_backoff=1.0,
        scope_strategy=ScopeStrategy.NONE,
    )
    saga_id = uuid.uuid4()
    results = [r async for r in mediator.stream(OrderContext(order_id="1"), saga_id=saga_id)]
    assert [r.step_type for r in results] == [Announce, MaybeFail]
    assert results[0].response == Done(order_id="1")
    assert sorted(probe.handled) == [0, 1, 2] and probe.peak == 3
    assert [m.payload["event_name"] for m in broker.sent] == ["order.announced"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.COMPLETED

    # The compensation retry numbers are the mediator's: the first attempt fails, the second succeeds.
    failing = uuid.uuid4()
    with pytest.raises(ValueError, match="step failed"):
        async for _ in mediator.stream(OrderContext(order_id="2", fail=True), saga_id=failing):
            pass
    assert probe.compensations == 2
    assert (await storage.load_saga_state(failing))[0] == SagaStatus.FAILED


async def test_a_mediator_takes_python_cqrs_parameters_positionally() -> None:
    probe = Probe()
    storage = MemorySagaStorage()
    mediator = SagaMediator(
        saga_map(), probe_container(probe), None, None, ping_map(), 1, None, storage, 3, 0.0, 2.0, ScopeStrategy.NONE
    )
    assert mediator.storage is storage
    outcome = await mediator.run(OrderContext(order_id="1"))
    assert outcome.status == SagaStatus.COMPLETED
    assert probe.handled == [0, 1, 2] and probe.peak == 1  # event_map alone: handlers from the container


async def test_execute_is_python_cqrs_5s_name_for_stream(storage: SagaStorage) -> None:
    mediator = SagaMediator(saga_map=saga_map(), container=probe_container(Probe()), storage=storage)
    saga_id = uuid.uuid4()
    results = [r async for r in mediator.execute(OrderContext(order_id="1"), saga_id=saga_id)]
    assert [r.step_type for r in results] == [Announce, MaybeFail]
    assert all(r.saga_id == saga_id for r in results)
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.COMPLETED


async def test_a_context_bound_to_no_saga_raises_python_cqrs_error() -> None:
    @dataclasses.dataclass
    class Unbound(SagaContext):
        pass

    mediator = SagaMediator(saga_map=saga_map(), container=di.Container())
    with pytest.raises(SagaDoesNotExist):
        async for _ in mediator.stream(Unbound()):
            pass


# -- bootstrap -------------------------------------------------------------------------------------


async def test_every_bootstrap_keyword_means_what_it_means_in_python_cqrs() -> None:
    probe, broker = Probe(), RecordingBroker()
    order: list[str] = []
    seen_maps: list[object] = []
    never_called: list[object] = []

    def sagas_mapper(mapper: cqrs.SagaMap) -> None:
        order.append("sagas_mapper")
        seen_maps.append(mapper)
        mapper.bind(OrderContext, AnnounceSaga)

    def domain_events_mapper(mapper: EventMap) -> None:
        order.append("domain_events_mapper")
        seen_maps.append(mapper)
        mapper.bind(Ping, PingHandler)

    class Middleware:
        async def __call__(self, request: object, handle: typing.Callable[..., typing.Any]) -> object:
            never_called.append(request)  # python-cqrs's saga path never calls middlewares either
            return await handle(request)

    storage = MemorySagaStorage()
    mediator = bootstrap.bootstrap(
        di_container=probe_container(probe),
        message_broker=broker,
        middlewares=[Middleware()],
        sagas_mapper=sagas_mapper,
        domain_events_mapper=domain_events_mapper,
        on_startup=[lambda: order.append("startup 1"), lambda: order.append("startup 2")],
        saga_storage=storage,
        max_concurrent_event_handlers=2,
        concurrent_event_handle_enable=True,
        scope_strategy=ScopeStrategy.NONE,
    )
    assert order[:2] == ["startup 1", "startup 2"]  # on_startup runs first
    assert sorted(order[2:]) == ["domain_events_mapper", "sagas_mapper"]
    assert isinstance(seen_maps[0], (SagaMap, EventMap)) and {type(m) for m in seen_maps} == {SagaMap, EventMap}
    assert isinstance(mediator, cqrs.SagaMediator) and mediator.storage is storage

    saga_id = uuid.uuid4()
    results = [r async for r in mediator.stream(OrderContext(order_id="1"), saga_id=saga_id)]
    assert [r.step_type for r in results] == [Announce, MaybeFail]
    assert sorted(probe.handled) == [0, 1, 2]
    assert probe.peak == 2  # max_concurrent_event_handlers, concurrently
    (message,) = broker.sent  # notification events go to the broker's send_message
    assert message.payload["event_name"] == "order.announced"
    assert never_called == []
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.COMPLETED


async def test_bootstrap_takes_its_parameters_positionally_and_defaults_to_memory_storage() -> None:
    probe = Probe()
    mediator = bootstrap.bootstrap(
        probe_container(probe),
        RecordingBroker(),
        [],
        lambda mapper: mapper.bind(OrderContext, AnnounceSaga),
        lambda mapper: mapper.bind(Ping, PingHandler),
        [],
        None,
        3,
        False,
        ScopeStrategy.NONE,
    )
    assert isinstance(mediator.storage, MemorySagaStorage)
    assert (await mediator.run(OrderContext(order_id="1"))).status == SagaStatus.COMPLETED
    assert probe.handled == [0, 1, 2] and probe.peak == 1  # concurrent_event_handle_enable=False


@pytest.mark.parametrize(
    ("max_handlers", "concurrent", "strategy", "peak"),
    [
        (1, None, ScopeStrategy.NONE, 1),
        (3, None, ScopeStrategy.NONE, 3),  # None means concurrent, except under SEND
        (3, True, ScopeStrategy.NONE, 3),
        (2, True, ScopeStrategy.NONE, 2),
        (3, False, ScopeStrategy.NONE, 1),
        (3, None, ScopeStrategy.SEND, 1),
        (3, None, ScopeStrategy.HANDLER, 3),
    ],
)
async def test_event_handler_concurrency_settings(
    max_handlers: int, concurrent: bool | None, strategy: ScopeStrategy, peak: int
) -> None:
    probe = Probe()
    mediator = bootstrap.bootstrap(
        probe_container(probe),
        sagas_mapper=lambda mapper: mapper.bind(OrderContext, AnnounceSaga),
        domain_events_mapper=lambda mapper: mapper.bind(Ping, PingHandler),
        message_broker=RecordingBroker(),
        max_concurrent_event_handlers=max_handlers,
        concurrent_event_handle_enable=concurrent,
        scope_strategy=strategy,
    )
    assert (await mediator.run(OrderContext(order_id="1"))).status == SagaStatus.COMPLETED
    assert sorted(probe.handled) == [0, 1, 2]
    assert probe.peak == peak


def test_send_scopes_refuse_concurrent_event_handlers() -> None:
    with pytest.raises(ValueError, match="SEND"):
        bootstrap.bootstrap(
            di.Container(),
            sagas_mapper=lambda mapper: mapper.bind(OrderContext, AnnounceSaga),
            concurrent_event_handle_enable=True,
            scope_strategy=ScopeStrategy.SEND,
        )


# -- ScopeStrategy, with a container that counts its scopes ----------------------------------------


class ScopeCounter:
    """A container with ``open_scope``: records which scope (None: none) built what."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.built: list[tuple[int | None, str]] = []
        self.instances: dict[str, list[object]] = {}

    def build(self, scope: int | None, type_: type[typing.Any]) -> typing.Any:
        self.built.append((scope, type_.__name__))
        instance = type_(self) if type_ in (Scoped, Scoped2, ScopedHandler) else type_()
        self.instances.setdefault(type_.__name__, []).append(instance)
        return instance

    async def resolve(self, type_: type[typing.Any]) -> typing.Any:
        return self.build(None, type_)

    @contextlib.asynccontextmanager
    async def open_scope(
        self, context: typing.Mapping[type[typing.Any], typing.Any] | None = None
    ) -> typing.AsyncIterator[typing.Any]:
        self.opened += 1
        number = self.opened
        counter = self

        class InScope:
            async def resolve(self, type_: type[typing.Any]) -> typing.Any:
                return counter.build(number, type_)

        try:
            yield InScope()
        finally:
            self.closed += 1


class Pong(DomainEvent, frozen=True):
    pass


class Scoped(SagaStepHandler[OrderContext, None]):
    def __init__(self, counter: ScopeCounter) -> None:
        self.counter = counter
        self.open_during_act = 0
        self.compensated_by: list[object] = []

    @property
    def events(self) -> list[cqrs.IEvent]:
        return [Pong()]

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
        self.open_during_act = self.counter.opened - self.counter.closed
        return self._generate_step_result(None)

    async def compensate(self, context: OrderContext) -> None:
        self.compensated_by.append(self)


class Scoped2(Scoped):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
        await super().act(context)
        if context.fail:
            raise RuntimeError("second step failed")
        return self._generate_step_result(None)


class ScopedHandler(EventHandler[Pong]):
    def __init__(self, counter: ScopeCounter) -> None:
        self.counter = counter

    async def handle(self, event: Pong) -> None:
        return None


class ScopedSaga(Saga[OrderContext]):
    steps = [Scoped, Scoped2]


def scoped_mediator(counter: ScopeCounter, strategy: ScopeStrategy) -> SagaMediator:
    return bootstrap.bootstrap(
        counter,
        sagas_mapper=lambda mapper: mapper.bind(OrderContext, ScopedSaga),
        domain_events_mapper=lambda mapper: mapper.bind(Pong, ScopedHandler),
        scope_strategy=strategy,
        compensation_retry_delay=0.0,
    )


async def test_scope_strategy_none_opens_no_scope() -> None:
    counter = ScopeCounter()
    outcome = await scoped_mediator(counter, ScopeStrategy.NONE).run(OrderContext(order_id="1"))
    assert outcome.status == SagaStatus.COMPLETED
    assert counter.opened == 0
    assert counter.built == [
        (None, "Scoped"), (None, "ScopedHandler"), (None, "Scoped2"), (None, "ScopedHandler"),
    ]


async def test_scope_strategy_send_opens_one_scope_per_run_for_steps_and_handlers() -> None:
    counter = ScopeCounter()
    mediator = scoped_mediator(counter, ScopeStrategy.SEND)
    for order in ("1", "2"):
        assert (await mediator.run(OrderContext(order_id=order))).status == SagaStatus.COMPLETED
    assert counter.opened == counter.closed == 2  # closed when each run ended
    assert counter.built == [
        (1, "Scoped"), (1, "ScopedHandler"), (1, "Scoped2"), (1, "ScopedHandler"),
        (2, "Scoped"), (2, "ScopedHandler"), (2, "Scoped2"), (2, "ScopedHandler"),
    ]
    assert all(step.open_during_act == 1 for step in counter.instances["Scoped2"])  # type: ignore[attr-defined]


async def test_scope_strategy_handler_opens_one_scope_per_step_and_per_handler() -> None:
    counter = ScopeCounter()
    outcome = await scoped_mediator(counter, ScopeStrategy.HANDLER).run(OrderContext(order_id="1"))
    assert outcome.status == SagaStatus.COMPLETED
    assert counter.built == [(1, "Scoped"), (2, "ScopedHandler"), (3, "Scoped2"), (4, "ScopedHandler")]
    assert counter.opened == counter.closed == 4


async def test_under_handler_scopes_a_step_is_compensated_by_the_instance_that_acted() -> None:
    counter = ScopeCounter()
    with pytest.raises(RuntimeError, match="second step failed"):
        async for _ in scoped_mediator(counter, ScopeStrategy.HANDLER).stream(OrderContext(order_id="1", fail=True)):
            pass
    (first,) = counter.instances["Scoped"]
    assert first.compensated_by == [first]  # type: ignore[attr-defined]
    assert counter.opened == counter.closed  # every scope closed once the run ended


class Session:
    """A "request"-scoped unit of work."""


SESSIONS: dict[str, list[Session]] = {}


class UsesSession(SagaStepHandler[OrderContext, None]):
    def __init__(self, session: Session) -> None:
        self.session = session

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
        SESSIONS.setdefault(context.order_id, []).append(self.session)
        return self._generate_step_result(None)


class First(UsesSession):
    pass


class Second(UsesSession):
    pass


class SessionSaga(Saga[OrderContext]):
    steps = [First, Second]


async def test_scope_strategies_with_request_scoped_di_bindings() -> None:
    """SEND shares a "request"-scoped service across a run's steps; NONE builds one per step."""
    container = di.Container()
    container.bind(di.bind_by_type(dependent.Dependent(Session, scope="request"), Session))
    for strategy in (ScopeStrategy.SEND, ScopeStrategy.NONE):
        mediator = bootstrap.bootstrap(
            container, sagas_mapper=lambda mapper: mapper.bind(OrderContext, SessionSaga), scope_strategy=strategy
        )
        order = f"{strategy.value}-{uuid.uuid4()}"
        assert (await mediator.run(OrderContext(order_id=order))).status == SagaStatus.COMPLETED
        first, second = SESSIONS.pop(order)
        assert (first is second) == (strategy is ScopeStrategy.SEND)
