"""The pydantic flavours of events and responses under python-cqrs 5's path."""

from cqrs.events.event import PydanticDomainEvent, PydanticEvent, PydanticNotificationEvent
from cqrs.response import PydanticResponse

__all__ = ["PydanticDomainEvent", "PydanticEvent", "PydanticNotificationEvent", "PydanticResponse"]
