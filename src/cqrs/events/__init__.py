"""Events: types, handlers, the map binding them, and how a step's events are handed on.

python-cqrs's modules under its names: `cqrs.events.event` (`Event`,
`DomainEvent`, `NotificationEvent`, `IEvent`, ...), `cqrs.events.event_handler`
(`EventHandler`), `cqrs.events.map` (`EventMap`) and
`cqrs.events.event_emitter` (`EventEmitter`).
"""

from cqrs.events.dispatch import EventDispatcher, EventDispatchHook
from cqrs.events.event import (
    DCDomainEvent,
    DCEvent,
    DCNotificationEvent,
    DomainEvent,
    Event,
    IDomainEvent,
    IEvent,
    INotificationEvent,
    NotificationEvent,
    PydanticDomainEvent,
    PydanticEvent,
    PydanticNotificationEvent,
)
from cqrs.events.event_emitter import EventEmitter
from cqrs.events.event_handler import EventHandler
from cqrs.events.map import EventMap

__all__ = [
    "DCDomainEvent",
    "DCEvent",
    "DCNotificationEvent",
    "DomainEvent",
    "Event",
    "EventDispatchHook",
    "EventDispatcher",
    "EventEmitter",
    "EventHandler",
    "EventMap",
    "IDomainEvent",
    "IEvent",
    "INotificationEvent",
    "NotificationEvent",
    "PydanticDomainEvent",
    "PydanticEvent",
    "PydanticNotificationEvent",
]
