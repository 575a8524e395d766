"""Domain events produced by saga steps, and their handlers."""

from __future__ import annotations

import logging
import typing

from cqrs.container import Container

__all__ = ["EventHandler", "EventMap"]

logger = logging.getLogger("cqrs.events")

E = typing.TypeVar("E", contravariant=True)


@typing.runtime_checkable
class EventHandler(typing.Protocol[E]):
    """Handles one type of domain event."""

    async def handle(self, event: E) -> None: ...


class EventMap:
    """Binds event types to handler classes (resolved from the DI container)."""

    def __init__(self) -> None:
        self._handlers: dict[type[typing.Any], list[type[typing.Any]]] = {}

    def bind(self, event_type: type[typing.Any], handler_type: type[EventHandler[typing.Any]]) -> None:
        self._handlers.setdefault(event_type, []).append(handler_type)

    def handlers_for(self, event_type: type[typing.Any]) -> list[type[typing.Any]]:
        found: list[type[typing.Any]] = []
        for klass in event_type.__mro__:
            found.extend(self._handlers.get(klass, ()))
        return found

    def __bool__(self) -> bool:
        return bool(self._handlers)


class EventDispatcher:
    """Hands a step's events to their handlers once the step is recorded.

    A failing handler is logged and does not fail the saga: the step it
    reports on is already committed.
    """

    def __init__(self, event_map: EventMap, container: Container) -> None:
        self._map = event_map
        self._container = container

    async def dispatch(self, events: typing.Iterable[object]) -> None:
        for event in events:
            for handler_type in self._map.handlers_for(type(event)):
                try:
                    handler = await self._container.resolve(handler_type)
                    await handler.handle(event)
                except Exception:
                    logger.exception(
                        "Event handler %s failed on %s", handler_type.__qualname__, type(event).__qualname__
                    )
