"""Dependency injection the python-cqrs way (issue 12, point 3).

Bindings in any ``di`` scope (``"request"``, python-cqrs's, in particular)
work through `bootstrap` and through `recover_saga`, and our promise holds:
one step instance per saga run, so ``act``, ``events`` and ``compensate`` see
the same object. `DIContainer` takes ``attach_external_container``,
``cqrs.container.Container[T]`` can be subclassed, and dishka and
dependency-injector containers plug in through their adapters (extras, with
an install hint when missing).
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import typing
import uuid

import di
import pytest
from di import dependent

import cqrs
from cqrs import container as cqrs_container
from cqrs.container.di import DIContainer
from cqrs.saga import bootstrap
from cqrs.saga.models import SagaContext
from cqrs.saga.recovery import recover_saga
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


# -- a saga whose steps depend on services of several scopes ------------------------------------


class Journal:
    """Who did what, with which instances (one per test)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []
        # The instances noted stay alive with the journal: a freed instance's id may be given to a later one.
        self._kept: list[object] = []

    def note(self, what: str, step: object, service: object) -> None:
        self.calls.append((what, id(step), id(service)))
        self._kept += (step, service)


class Inventory:
    """A "request"-scoped service: python-cqrs's binding scope."""


class Settings:
    """An "app"-scoped service."""


class Clock:
    """Bound without a scope (di's default)."""


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    fail_at_ship: bool = False


class Reserve(SagaStepHandler[OrderContext, None]):
    def __init__(self, inventory: Inventory, settings: Settings, clock: Clock, journal: Journal) -> None:
        self.inventory = inventory
        self.settings = settings
        self.clock = clock
        self.journal = journal

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
        self.journal.note("act", self, self.inventory)
        return self._generate_step_result(None)

    @property
    def events(self) -> list[cqrs.IEvent]:
        self.journal.note("events", self, self.inventory)
        return []

    async def compensate(self, context: OrderContext) -> None:
        self.journal.note("compensate", self, self.inventory)


class Ship(SagaStepHandler[OrderContext, None]):
    def __init__(self, inventory: Inventory, journal: Journal) -> None:
        self.inventory = inventory
        self.journal = journal

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
        self.journal.note("ship", self, self.inventory)
        if context.fail_at_ship:
            raise RuntimeError("carrier down")
        return self._generate_step_result(None)


class OrderSaga(Saga[OrderContext]):
    steps = [Reserve, Ship]


def python_cqrs_container(journal: Journal) -> di.Container:
    """Bound as python-cqrs's examples bind: ``bind_by_type(Dependent(..., scope=...), Type)``."""
    container = di.Container()
    container.bind(di.bind_by_type(dependent.Dependent(Inventory, scope="request"), Inventory))
    container.bind(di.bind_by_type(dependent.Dependent(Settings, scope="app"), Settings))
    container.bind(di.bind_by_type(dependent.Dependent(Clock), Clock))
    container.bind(di.bind_by_type(dependent.Dependent(lambda: journal, scope="request"), Journal))
    return container


def mediator_for(container: typing.Any, storage: SagaStorage) -> cqrs.SagaMediator:
    return bootstrap.bootstrap(
        di_container=container,
        sagas_mapper=lambda saga_map: saga_map.bind(OrderContext, OrderSaga),
        saga_storage=storage,
        compensation_retry_delay=0.0,
    )


async def test_bindings_in_any_di_scope_build_the_steps_through_bootstrap(storage: SagaStorage) -> None:
    journal = Journal()
    mediator = mediator_for(python_cqrs_container(journal), storage)
    saga_id = uuid.uuid4()
    results = [r async for r in mediator.stream(OrderContext(order_id="1"), saga_id=saga_id)]
    assert [r.step_type for r in results] == [Reserve, Ship]
    status, _, _ = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPLETED

    # A second run builds its own step instances.
    first_run = {step for _, step, _ in journal.calls}
    journal.calls.clear()
    outcome = await mediator.run(OrderContext(order_id="2"))
    assert outcome.status == SagaStatus.COMPLETED
    assert not first_run & {step for _, step, _ in journal.calls}


async def test_act_events_and_compensate_see_one_step_instance_with_request_scoped_services(
    storage: SagaStorage,
) -> None:
    journal = Journal()
    mediator = mediator_for(python_cqrs_container(journal), storage)
    with pytest.raises(RuntimeError, match="carrier down"):
        async for _ in mediator.stream(OrderContext(order_id="1", fail_at_ship=True)):
            pass
    reserve = [(what, step, service) for what, step, service in journal.calls if what != "ship"]
    assert [what for what, _, _ in reserve][:2] == ["act", "events"]
    assert "compensate" in [what for what, _, _ in reserve]
    assert len({step for _, step, _ in reserve}) == 1  # one Reserve instance for act, events, compensate
    assert len({service for _, _, service in reserve}) == 1  # and the Inventory it was built with


async def test_request_scoped_bindings_work_through_recover_saga(storage: SagaStorage) -> None:
    journal = Journal()
    container = python_cqrs_container(journal)
    saga_id = uuid.uuid4()
    async with OrderSaga().transaction(
        context=OrderContext(order_id="1"), container=container, storage=storage, saga_id=saga_id
    ) as transaction:
        async for _ in transaction:
            break  # "crash" after the first step
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.RUNNING

    wrapped = DIContainer()  # python-cqrs's spelling: construct, then attach
    wrapped.attach_external_container(container)
    journal.calls.clear()
    await recover_saga(OrderSaga(), saga_id, OrderContext, wrapped, storage)
    assert [what for what, _, _ in journal.calls] == ["ship"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.COMPLETED


async def test_a_compensating_saga_recovers_with_request_scoped_bindings(storage: SagaStorage) -> None:
    journal = Journal()
    container = python_cqrs_container(journal)
    saga_id = uuid.uuid4()
    async with OrderSaga().transaction(
        context=OrderContext(order_id="1"), container=container, storage=storage, saga_id=saga_id
    ) as transaction:
        async for _ in transaction:
            break
    await storage.update_status(saga_id, SagaStatus.COMPENSATING)
    journal.calls.clear()
    with pytest.raises(RuntimeError, match=r"recovered in compensating state"):
        await recover_saga(OrderSaga(), saga_id, OrderContext, container, storage)  # a raw di.Container
    assert [what for what, _, _ in journal.calls if what != "events"] == ["compensate"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.FAILED


# -- DIContainer -------------------------------------------------------------------------------


async def test_di_container_wraps_the_container_attached_to_it() -> None:
    wrapped = DIContainer()
    with pytest.raises(ValueError, match="attach"):
        _ = wrapped.external_container
    first, second = di.Container(), di.Container()
    first.bind(di.bind_by_type(dependent.Dependent(lambda: "first", scope="request"), str))
    second.bind(di.bind_by_type(dependent.Dependent(lambda: "second", scope="request"), str))
    wrapped.attach_external_container(first)
    assert wrapped.external_container is first
    assert await wrapped.resolve(str) == "first"
    wrapped.attach_external_container(second)  # forgets what it solved against the first
    assert await wrapped.resolve(str) == "second"
    # Unbound classes are built from their constructor's annotations (python-cqrs's examples rely on it).
    assert isinstance(await wrapped.resolve(Inventory), Inventory)
    assert DIContainer("request").scope == "request"  # python-cqrs's DIContainer(scope) spelling


async def test_a_request_scoped_service_is_fresh_for_each_resolve_and_shared_within_one() -> None:
    class NeedsTwo:
        def __init__(self, first: Inventory, second: Inventory) -> None:
            self.first = first
            self.second = second

    container = di.Container()
    container.bind(di.bind_by_type(dependent.Dependent(Inventory, scope="request"), Inventory))
    wrapped = DIContainer()
    wrapped.attach_external_container(container)
    one, two = await wrapped.resolve(NeedsTwo), await wrapped.resolve(NeedsTwo)
    assert one.first is one.second
    assert one.first is not two.first


# -- Container[T] subclassed -------------------------------------------------------------------


class SimpleContainer(cqrs_container.Container[typing.Any]):
    """A hand-written container, as python-cqrs's recovery examples write one."""

    def __init__(self, journal: Journal) -> None:
        self._external: typing.Any = None
        self.journal = journal

    @property
    def external_container(self) -> typing.Any:
        return self._external

    def attach_external_container(self, container: typing.Any) -> None:
        self._external = container

    async def resolve(self, type_: type[typing.Any]) -> typing.Any:
        if type_ is Reserve:
            return Reserve(Inventory(), Settings(), Clock(), self.journal)
        if type_ is Ship:
            return Ship(Inventory(), self.journal)
        raise ValueError(f"Unknown type: {type_}")


async def test_a_subclass_of_container_builds_the_steps(storage: SagaStorage) -> None:
    journal = Journal()
    container = SimpleContainer(journal)
    container.attach_external_container({"anything": 1})
    assert container.external_container == {"anything": 1}
    outcome = await mediator_for(container, storage).run(OrderContext(order_id="1"))
    assert outcome.status == SagaStatus.COMPLETED
    assert [what for what, _, _ in journal.calls if what != "events"] == ["act", "ship"]


async def test_a_resolve_replaced_on_the_instance_is_the_one_used() -> None:
    """python-cqrs's recovery example swaps ``container.resolve`` for a function of its own."""
    journal = Journal()
    container = SimpleContainer(journal)
    original = container.resolve
    asked: list[type[typing.Any]] = []

    async def resolve(type_: type[typing.Any]) -> typing.Any:
        asked.append(type_)
        return await original(type_)

    container.resolve = resolve  # type: ignore[method-assign]
    saga_id = uuid.uuid4()
    storage = MemorySagaStorage()
    async with OrderSaga().transaction(
        context=OrderContext(order_id="1"), container=container, storage=storage, saga_id=saga_id
    ) as transaction:
        [r.step_type async for r in transaction]
    assert asked == [Reserve, Ship]


# -- dishka --------------------------------------------------------------------------------------


class Session:
    """A unit of work: one per dishka REQUEST scope, closed when the scope ends."""

    def __init__(self) -> None:
        self.closed = False


class WithSession(SagaStepHandler[OrderContext, None]):
    def __init__(self, session: Session, journal: Journal) -> None:
        self.session = session
        self.journal = journal

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
        assert not self.session.closed
        self.journal.note(type(self).__name__, self, self.session)
        return self._generate_step_result(None)


class Charge(WithSession):
    pass


class Notify(WithSession):
    pass


class SessionSaga(Saga[OrderContext]):
    steps = [Charge, Notify]


def dishka_container(journal: Journal, sessions: list[Session]) -> typing.Any:
    from dishka import Provider, Scope, make_async_container

    def journal_factory() -> Journal:
        return journal

    def session_factory() -> typing.Iterator[Session]:
        session = Session()
        sessions.append(session)
        yield session
        session.closed = True

    provider = Provider(scope=Scope.REQUEST)
    provider.provide(journal_factory, scope=Scope.APP)
    provider.provide(session_factory)
    provider.provide(Charge)
    provider.provide(Notify)
    return make_async_container(provider)


@pytest.mark.parametrize(
    ("strategy", "sessions_per_run"), [(cqrs.ScopeStrategy.SEND, 1), (cqrs.ScopeStrategy.HANDLER, 2)]
)
async def test_dishka_request_scopes_follow_the_scope_strategy(
    strategy: cqrs.ScopeStrategy, sessions_per_run: int
) -> None:
    from cqrs.container.dishka import DishkaCQRSContainer

    journal, sessions = Journal(), []
    container = dishka_container(journal, sessions)
    mediator = bootstrap.bootstrap(
        di_container=DishkaCQRSContainer(container),
        sagas_mapper=lambda saga_map: saga_map.bind(OrderContext, SessionSaga),
        scope_strategy=strategy,
    )
    for order in ("1", "2"):
        outcome = await mediator.run(OrderContext(order_id=order))
        assert outcome.status == SagaStatus.COMPLETED
    assert len(sessions) == 2 * sessions_per_run
    assert all(session.closed for session in sessions)  # every REQUEST scope was closed with its run
    await container.close()


async def test_dishka_app_scoped_steps_resolve_without_a_scope() -> None:
    from dishka import Provider, Scope, make_async_container

    from cqrs.container.dishka import DishkaCQRSContainer

    journal = Journal()

    def journal_factory() -> Journal:
        return journal

    provider = Provider(scope=Scope.APP)
    provider.provide(journal_factory)
    provider.provide(Inventory)
    provider.provide(Ship)
    provider.provide(Reserve)
    provider.provide(Settings)
    provider.provide(Clock)
    container = make_async_container(provider)
    adapter = DishkaCQRSContainer.of(container)
    assert adapter.external_container is container
    outcome = await mediator_for(adapter, MemorySagaStorage()).run(OrderContext(order_id="1"))
    assert outcome.status == SagaStatus.COMPLETED
    assert [what for what, _, _ in journal.calls if what != "events"] == ["act", "ship"]
    await container.close()


# -- dependency-injector ----------------------------------------------------------------------------


async def test_a_dependency_injector_container_builds_the_steps(storage: SagaStorage) -> None:
    from dependency_injector import containers, providers

    from cqrs.container.dependency_injector import DependencyInjectorCQRSContainer

    journal = Journal()

    class Services(containers.DeclarativeContainer):
        journal_ = providers.Object(journal)
        inventory = providers.Factory(Inventory)

    class Application(containers.DeclarativeContainer):
        services = providers.Container(Services)  # nested containers are searched too
        reserve = providers.Factory(
            Reserve, inventory=services.inventory, settings=providers.Singleton(Settings),
            clock=providers.Factory(Clock), journal=services.journal_,
        )
        ship = providers.Factory(Ship, inventory=services.inventory, journal=services.journal_)

    adapter = DependencyInjectorCQRSContainer()
    adapter.attach_external_container(Application())
    with pytest.raises(ValueError, match="OrderContext"):
        await adapter.resolve(OrderContext)
    mediator = mediator_for(adapter, storage)
    with pytest.raises(RuntimeError, match="carrier down"):
        await drain(mediator.stream(OrderContext(order_id="1", fail_at_ship=True)))
    reserve = [(what, step) for what, step, _ in journal.calls if what != "ship"]
    assert [what for what, _ in reserve][:2] == ["act", "events"]
    assert "compensate" in [what for what, _ in reserve]
    assert len({step for _, step in reserve}) == 1


async def drain(stream: typing.AsyncIterator[typing.Any]) -> list[typing.Any]:
    return [item async for item in stream]


# -- install hints ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "package", "extra"),
    [
        ("cqrs.container.dishka", "dishka", "dishka"),
        ("cqrs.container.dependency_injector", "dependency_injector", "dependency-injector"),
    ],
)
def test_an_adapter_without_its_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, package: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'cqrs-saga\[{extra}\]'"):
        importlib.import_module(module)
