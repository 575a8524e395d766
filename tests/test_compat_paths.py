"""Every module path a python-cqrs 4.x or 5.x saga user imports resolves here, to one object per name.

A python-cqrs user switches by changing nothing, whichever release they wrote
their imports for: each (path, name) below must import and be the very object
this package defines once (so ``isinstance`` checks and identity comparisons
written against either path agree).
"""

from __future__ import annotations

import importlib
import typing

import pytest

from cqrs.adapters.circuit_breaker import AioBreakerAdapter
from cqrs.container.di import DIContainer
from cqrs.container.protocol import Container, SupportsScope
from cqrs.container.scope import ScopeStrategy
from cqrs.dispatcher import exceptions as dispatcher_exceptions
from cqrs.events import event as events
from cqrs.events.event_emitter import EventEmitter
from cqrs.events.event_handler import EventHandler
from cqrs.events.map import EventMap
from cqrs.message_brokers.devnull import DevnullMessageBroker
from cqrs.message_brokers.protocol import Message, MessageBroker
from cqrs.response import DCResponse, IResponse, PydanticResponse, Response
from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.fallback import Fallback
from cqrs.saga.map import SagaMap
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.mermaid import SagaMermaid
from cqrs.saga.models import ContextT, SagaContext
from cqrs.saga.recovery import recover_saga
from cqrs.saga.saga import Saga
from cqrs.saga.step import Resp, SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.saga.storage.models import SagaLogEntry
from cqrs.saga.storage.protocol import ISagaStorage

EVENT_NAMES = [
    "Event", "DomainEvent", "NotificationEvent", "IEvent", "IDomainEvent", "INotificationEvent",
    "DCEvent", "DCDomainEvent", "DCNotificationEvent",
]

# (module, name, the object it must be)
V4: list[tuple[str, str, object]] = [
    # events
    *[("cqrs.events.event", name, getattr(events, name)) for name in EVENT_NAMES],
    *[("cqrs.events.event", name, getattr(events, name))
      for name in ("PydanticEvent", "PydanticDomainEvent", "PydanticNotificationEvent")],
    ("cqrs.events.event_handler", "EventHandler", EventHandler),
    ("cqrs.events.map", "EventMap", EventMap),
    ("cqrs.events.event_emitter", "EventEmitter", EventEmitter),
    *[("cqrs.events", name, getattr(events, name)) for name in EVENT_NAMES],
    ("cqrs.events", "EventHandler", EventHandler),
    ("cqrs.events", "EventMap", EventMap),
    ("cqrs.events", "EventEmitter", EventEmitter),
    # responses
    ("cqrs.response", "Response", Response),
    ("cqrs.response", "IResponse", IResponse),
    ("cqrs.response", "DCResponse", DCResponse),
    ("cqrs.response", "PydanticResponse", PydanticResponse),
    # maps and mediator
    ("cqrs.requests.map", "SagaMap", SagaMap),
    ("cqrs.mediator", "SagaMediator", SagaMediator),
    # containers
    ("cqrs.container", "Container", Container),
    ("cqrs.container", "DIContainer", DIContainer),
    ("cqrs.container", "ScopeStrategy", ScopeStrategy),
    ("cqrs.container", "SupportsScope", SupportsScope),
    ("cqrs.container.protocol", "Container", Container),
    ("cqrs.container.protocol", "SupportsScope", SupportsScope),
    ("cqrs.container.di", "DIContainer", DIContainer),
    ("cqrs.container.scope", "ScopeStrategy", ScopeStrategy),
    # the saga package
    ("cqrs.saga.bootstrap", "bootstrap", bootstrap),
    ("cqrs.saga.models", "SagaContext", SagaContext),
    ("cqrs.saga.models", "ContextT", ContextT),
    ("cqrs.saga.saga", "Saga", Saga),
    ("cqrs.saga.step", "SagaStepHandler", SagaStepHandler),
    ("cqrs.saga.step", "SagaStepResult", SagaStepResult),
    ("cqrs.saga.step", "Resp", Resp),
    ("cqrs.saga.mermaid", "SagaMermaid", SagaMermaid),
    ("cqrs.saga.fallback", "Fallback", Fallback),
    ("cqrs.saga.recovery", "recover_saga", recover_saga),
    ("cqrs.saga.storage.enums", "SagaStatus", SagaStatus),
    ("cqrs.saga.storage.enums", "SagaStepStatus", SagaStepStatus),
    ("cqrs.saga.storage.models", "SagaLogEntry", SagaLogEntry),
    ("cqrs.saga.storage.memory", "MemorySagaStorage", MemorySagaStorage),
    ("cqrs.saga.storage.protocol", "ISagaStorage", ISagaStorage),
    ("cqrs.saga.storage", "ISagaStorage", ISagaStorage),
    ("cqrs.saga.storage", "SagaStatus", SagaStatus),
    ("cqrs.saga.storage", "SagaStepStatus", SagaStepStatus),
    ("cqrs.saga.storage", "SagaLogEntry", SagaLogEntry),
    # exceptions, breaker, brokers
    *[("cqrs.dispatcher.exceptions", name, getattr(dispatcher_exceptions, name))
      for name in ("SagaDoesNotExist", "SagaConcurrencyError", "RequestHandlerDoesNotExist",
                   "RequestHandlerTypeError")],
    ("cqrs.adapters.circuit_breaker", "AioBreakerAdapter", AioBreakerAdapter),
    ("cqrs.message_brokers.protocol", "Message", Message),
    ("cqrs.message_brokers.protocol", "MessageBroker", MessageBroker),
    ("cqrs.message_brokers", "MessageBroker", MessageBroker),
    ("cqrs.message_brokers.devnull", "DevnullMessageBroker", DevnullMessageBroker),
    # the top-level names python-cqrs saga code uses
    *[("cqrs", name, getattr(events, name)) for name in EVENT_NAMES[:6]],
    ("cqrs", "EventHandler", EventHandler),
    ("cqrs", "EventMap", EventMap),
    ("cqrs", "EventEmitter", EventEmitter),
    ("cqrs", "Response", Response),
    ("cqrs", "IResponse", IResponse),
    ("cqrs", "SagaMap", SagaMap),
    ("cqrs", "SagaMediator", SagaMediator),
    ("cqrs", "Container", Container),
    ("cqrs", "DIContainer", DIContainer),
    ("cqrs", "ScopeStrategy", ScopeStrategy),
    ("cqrs", "Saga", Saga),
    ("cqrs", "SagaStepHandler", SagaStepHandler),
    ("cqrs", "SagaStepResult", SagaStepResult),
    ("cqrs", "Resp", Resp),
    ("cqrs", "SagaMermaid", SagaMermaid),
]

V5: list[tuple[str, str, object]] = [
    ("cqrs.handlers.saga", "SagaStepHandler", SagaStepHandler),
    ("cqrs.handlers.saga", "SagaStepResult", SagaStepResult),
    ("cqrs.handlers.saga", "Resp", Resp),
    ("cqrs.handlers", "SagaStepHandler", SagaStepHandler),
    ("cqrs.handlers", "SagaStepResult", SagaStepResult),
    ("cqrs.handlers", "Resp", Resp),
    ("cqrs.handlers", "EventHandler", EventHandler),
    ("cqrs.handlers.event", "EventHandler", EventHandler),
    ("cqrs.bootstrap.saga", "bootstrap", bootstrap),
    ("cqrs.mermaid.saga", "SagaMermaid", SagaMermaid),
    ("cqrs.mermaid", "SagaMermaid", SagaMermaid),
    ("cqrs.mapping.requests", "SagaMap", SagaMap),
    ("cqrs.mapping.events", "EventMap", EventMap),
    ("cqrs.mapping", "SagaMap", SagaMap),
    ("cqrs.mapping", "EventMap", EventMap),
    ("cqrs.mediators.saga", "SagaMediator", SagaMediator),
    ("cqrs.mediators", "SagaMediator", SagaMediator),
    *[("cqrs.models.event", name, getattr(events, name)) for name in EVENT_NAMES],
    *[("cqrs.models", name, getattr(events, name)) for name in EVENT_NAMES],
    ("cqrs.models.event", "DEFAULT_OUTPUT_TOPIC", events.DEFAULT_OUTPUT_TOPIC),
    *[("cqrs.models.pydantic", name, getattr(events, name))
      for name in ("PydanticEvent", "PydanticDomainEvent", "PydanticNotificationEvent")],
    ("cqrs.models.pydantic", "PydanticResponse", PydanticResponse),
    ("cqrs.models.response", "Response", Response),
    ("cqrs.models.response", "IResponse", IResponse),
    ("cqrs.models.response", "DCResponse", DCResponse),
    ("cqrs.models.response", "PydanticResponse", PydanticResponse),
    ("cqrs.models", "Response", Response),
    ("cqrs.models", "IResponse", IResponse),
    ("cqrs.models", "DCResponse", DCResponse),
    ("cqrs.models", "PydanticResponse", PydanticResponse),
]


def _id(entry: tuple[str, str, object]) -> str:
    return f"{entry[0]}.{entry[1]}"


@pytest.mark.parametrize(("module", "name", "expected"), V4, ids=[_id(e) for e in V4])
def test_a_python_cqrs_4_path_resolves_to_the_one_object(module: str, name: str, expected: object) -> None:
    assert getattr(importlib.import_module(module), name) is expected


@pytest.mark.parametrize(("module", "name", "expected"), V5, ids=[_id(e) for e in V5])
def test_a_python_cqrs_5_path_resolves_to_the_one_object(module: str, name: str, expected: object) -> None:
    assert getattr(importlib.import_module(module), name) is expected


def test_the_4_and_5_spellings_of_one_name_are_the_same_object() -> None:
    """Code mixing both releases' imports (mid-migration) sees one class per concept."""
    import cqrs.bootstrap.saga
    import cqrs.handlers.saga
    import cqrs.mapping.requests
    import cqrs.mediators.saga
    import cqrs.mermaid.saga
    import cqrs.models.event
    import cqrs.models.response
    import cqrs.requests.map
    import cqrs.saga.mermaid
    import cqrs.saga.step

    assert cqrs.handlers.saga.SagaStepHandler is cqrs.saga.step.SagaStepHandler
    assert cqrs.bootstrap.saga.bootstrap is importlib.import_module("cqrs.saga.bootstrap").bootstrap
    assert cqrs.mermaid.saga.SagaMermaid is cqrs.saga.mermaid.SagaMermaid
    assert cqrs.mapping.requests.SagaMap is cqrs.requests.map.SagaMap
    assert cqrs.mediators.saga.SagaMediator is importlib.import_module("cqrs.mediator").SagaMediator
    assert cqrs.models.event.Event is importlib.import_module("cqrs.events.event").Event
    assert cqrs.models.response.Response is importlib.import_module("cqrs.response").Response


def test_the_packages_python_cqrs_users_import_submodules_of_are_packages() -> None:
    """``cqrs.events``, ``cqrs.container`` (with ``protocol`` and ``di``) and the 5.x packages are packages."""
    for package in ("cqrs.events", "cqrs.container", "cqrs.bootstrap", "cqrs.handlers", "cqrs.mapping",
                    "cqrs.mediators", "cqrs.mermaid", "cqrs.models", "cqrs.dispatcher", "cqrs.requests"):
        assert hasattr(importlib.import_module(package), "__path__"), package
    from cqrs import container as cqrs_container  # the examples' spelling

    assert cqrs_container.protocol.Container is Container
    assert cqrs_container.di.DIContainer is DIContainer
    assert typing.get_origin(cqrs_container.Container[typing.Any]) is Container


def test_the_saga_bootstrap_is_reachable_as_python_cqrs_4_spells_it() -> None:
    from cqrs.saga import bootstrap as saga_bootstrap  # python-cqrs 4: `from cqrs.saga import bootstrap`

    assert saga_bootstrap.bootstrap is bootstrap
