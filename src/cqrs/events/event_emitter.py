"""Hands one event to where it goes: its handlers, or the message broker."""

from __future__ import annotations

import logging
import typing

from cqrs.container.scope import ScopeStrategy
from cqrs.events.event import INotificationEvent
from cqrs.events.map import EventMap
from cqrs.message_brokers.protocol import Message, MessageBroker

__all__ = ["EventEmitter", "notification_message"]

logger = logging.getLogger("cqrs.events")


def notification_message(event: INotificationEvent[typing.Any]) -> Message:
    """The broker message of a notification event (its ``event_id`` is the message id)."""
    return Message(
        message_name=type(event).__name__,
        topic=event.topic,
        payload=event.to_dict(),
        message_id=event.event_id,
    )


class EventEmitter:
    """Emits events: each to the handlers bound for it, a notification event to the broker.

    A handler is built from ``container`` for each event; a failing handler
    is logged and does not stop the others (the event it handles describes
    something already recorded). `emit` returns the follow-up events the
    handlers produced (their ``events``). A notification event with no broker
    raises `RuntimeError`; an event with no handler and no broker is dropped.
    """

    def __init__(
        self,
        event_map: EventMap,
        container: typing.Any,
        message_broker: MessageBroker | None = None,
        scope_strategy: ScopeStrategy = ScopeStrategy.NONE,
        *,
        serializer: typing.Any = None,
    ) -> None:
        from cqrs.container import as_container

        self.event_map = event_map
        self.container = as_container(container)
        self.message_broker = message_broker
        self.scope_strategy = scope_strategy
        self.serializer = serializer

    async def emit(self, event: object, *, container: typing.Any = None) -> typing.Sequence[object]:
        """Hand ``event`` on; returns the follow-up events its handlers produced."""
        follow_ups: list[object] = []
        resolver = container if container is not None else self.container
        for handler_type in self.event_map.handlers_for(type(event)):
            try:
                handler = await resolver.resolve(handler_type)
                await handler.handle(event)
                follow_ups.extend(getattr(handler, "events", ()) or ())
            except Exception:
                logger.exception(
                    "Event handler %s failed on %s", handler_type.__qualname__, type(event).__qualname__
                )
        if isinstance(event, INotificationEvent):
            if self.message_broker is None:
                raise RuntimeError(f"To send event {event}, a message broker must be specified")
            await self.message_broker.send_message(notification_message(event))
        return follow_ups
