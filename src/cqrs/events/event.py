"""Event types: domain events (handled in-process) and notification events (sent to a broker).

python-cqrs's types under its names. `Event`, `DomainEvent` and
`NotificationEvent` are frozen pydantic models (python-cqrs 4's defaults);
`DCEvent`, `DCDomainEvent` and `DCNotificationEvent` are the frozen dataclass
flavours (python-cqrs 5's defaults): a subclass of one of those becomes a
frozen dataclass by itself (``class Shipped(DCEvent): order_id: str``).

How events travel: a step's `events` are handed on once its step is recorded.
A domain event (or any event a handler is bound to) goes to the handlers
bound for its type in the `EventMap`; a notification event goes to the
message broker (or, durably, to the outbox); any other event is dropped.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import os
import typing
import uuid

import pydantic

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
    "PydanticDomainEvent",
    "PydanticEvent",
    "PydanticNotificationEvent",
]

#: The topic a notification event goes to unless it names one (env ``DEFAULT_OUTPUT_TOPIC``).
DEFAULT_OUTPUT_TOPIC = os.environ.get("DEFAULT_OUTPUT_TOPIC", "output_topic")

PayloadT = typing.TypeVar("PayloadT")
_Self = typing.TypeVar("_Self", bound="IEvent")


class IEvent(abc.ABC):
    """Every event: it turns into a dict and back."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, typing.Any]:
        """The event as a dict."""

    @classmethod
    @abc.abstractmethod
    def from_dict(cls: type[_Self], **kwargs: typing.Any) -> _Self:
        """An event built from the keyword arguments `to_dict` produced."""


class IDomainEvent(IEvent, abc.ABC):
    """Marks an event handled in-process by the handlers bound for it."""


class INotificationEvent(IEvent, typing.Generic[PayloadT], abc.ABC):
    """Marks an event sent to a message broker: it carries an id, a timestamp, a name, a topic and a payload."""

    event_id: uuid.UUID
    event_timestamp: datetime.datetime
    event_name: str
    topic: str
    payload: PayloadT


_P = typing.TypeVar("_P", bound="PydanticEvent")
_D = typing.TypeVar("_D", bound="DCEvent")

# -- pydantic flavour ----------------------------------------------------------------------------


class PydanticEvent(pydantic.BaseModel, IEvent, frozen=True):
    """A frozen pydantic event; `to_dict` is ``model_dump()`` (Python values, field names as declared)."""

    def to_dict(self) -> dict[str, typing.Any]:
        return self.model_dump(mode="python")

    @classmethod
    def from_dict(cls: type[_P], **kwargs: typing.Any) -> _P:
        return cls.model_validate(kwargs)


class PydanticDomainEvent(PydanticEvent, IDomainEvent, frozen=True):
    """A frozen pydantic domain event."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class PydanticNotificationEvent(PydanticEvent, INotificationEvent[PayloadT], typing.Generic[PayloadT]):
    """A frozen pydantic notification event: ``event_name`` and ``payload`` are required.

    ``event_id`` (a stable message id for consumers to drop duplicates),
    ``event_timestamp`` (UTC) and ``topic`` have defaults.
    """

    model_config = pydantic.ConfigDict(from_attributes=True, frozen=True)

    payload: PayloadT
    event_id: uuid.UUID = pydantic.Field(default_factory=uuid.uuid4)
    event_timestamp: datetime.datetime = pydantic.Field(default_factory=_now)
    event_name: str
    topic: str = DEFAULT_OUTPUT_TOPIC

    def __hash__(self) -> int:
        return hash(self.event_id)


# -- dataclass flavour ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DCEvent(IEvent):
    """A frozen dataclass event; subclasses become frozen dataclasses by themselves."""

    def __init_subclass__(cls, frozen: bool = True, kw_only: bool = False, **kwargs: typing.Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__dataclass_fields__" not in cls.__dict__:
            dataclasses.dataclass(frozen=frozen, kw_only=kw_only)(cls)

    def to_dict(self) -> dict[str, typing.Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[_D], **kwargs: typing.Any) -> _D:
        return cls(**kwargs)


class DCDomainEvent(DCEvent, IDomainEvent):
    """A frozen dataclass domain event."""


class DCNotificationEvent(DCEvent, INotificationEvent[PayloadT], typing.Generic[PayloadT], kw_only=True):
    """A frozen, keyword-only dataclass notification event (fields as `PydanticNotificationEvent`)."""

    event_name: str
    payload: PayloadT
    event_id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)
    event_timestamp: datetime.datetime = dataclasses.field(default_factory=_now)
    topic: str = DEFAULT_OUTPUT_TOPIC

    def __init_subclass__(cls, frozen: bool = True, kw_only: bool = True, **kwargs: typing.Any) -> None:
        super().__init_subclass__(frozen=frozen, kw_only=True, **kwargs)
        cls.__hash__ = DCNotificationEvent.__hash__  # type: ignore[method-assign]  # by id, not by fields

    def __hash__(self) -> int:
        return hash(self.event_id)

Event = PydanticEvent
DomainEvent = PydanticDomainEvent
NotificationEvent = PydanticNotificationEvent
