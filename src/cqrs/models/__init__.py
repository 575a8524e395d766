"""Event and response models under python-cqrs 5's paths (`cqrs.models.event`, `cqrs.models.response`)."""

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
    PydanticDomainEvent,
    PydanticEvent,
    PydanticNotificationEvent,
)
from cqrs.response import DCResponse, IResponse, PydanticResponse, Response

__all__ = [
    "DEFAULT_OUTPUT_TOPIC",
    "DCDomainEvent",
    "DCEvent",
    "DCNotificationEvent",
    "DCResponse",
    "DomainEvent",
    "Event",
    "IDomainEvent",
    "IEvent",
    "INotificationEvent",
    "IResponse",
    "NotificationEvent",
    "PydanticDomainEvent",
    "PydanticEvent",
    "PydanticNotificationEvent",
    "PydanticResponse",
    "Response",
]
