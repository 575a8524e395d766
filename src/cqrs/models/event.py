"""Event models under python-cqrs 5's path."""

from cqrs.events.event import (
    DEFAULT_OUTPUT_TOPIC,
    DCDomainEvent,
    DCEvent,
    DCNotificationEvent,
    DomainEvent,
    Event,
    IDomainEvent,
    IEvent,
    INotificationEvent,
    NotificationEvent,
)

__all__ = [
    "DEFAULT_OUTPUT_TOPIC",
    "DCDomainEvent",
    "DCEvent",
    "DCNotificationEvent",
    "DomainEvent",
    "Event",
    "IDomainEvent",
    "IEvent",
    "INotificationEvent",
    "NotificationEvent",
]
