"""Which handlers an event type is handed to."""

from __future__ import annotations

import typing

__all__ = ["EventMap"]

HandlerType = type[typing.Any]


class EventMap(dict[type[typing.Any], list[HandlerType]]):
    """Binds event types to handler classes (resolved from the container).

    A dict of event type to handler classes. An event is handed to the
    handlers bound for its type and for its base classes (binding a handler
    to a base type makes it see every subtype).
    """

    def bind(self, event_type: type[typing.Any], handler_type: HandlerType) -> None:
        """Hand events of ``event_type`` (and its subtypes) to ``handler_type``.

        Binding the same pair twice is a ``KeyError``.
        """
        handlers = self.setdefault(event_type, [])
        if handler_type in handlers:
            raise KeyError(f"{handler_type} already bound to {event_type}")
        handlers.append(handler_type)

    def __setitem__(self, event_type: type[typing.Any], handlers: list[HandlerType]) -> None:
        if event_type in self:
            raise KeyError(f"{event_type} already exists in the registry; bind more handlers with bind()")
        super().__setitem__(event_type, handlers)

    def handlers_for(self, event_type: type[typing.Any]) -> list[HandlerType]:
        """The handlers of ``event_type``: its own, then its bases', most specific first."""
        if len(self) == 0:
            return []
        found: list[HandlerType] = []
        for klass in event_type.__mro__:
            for handler in self.get(klass, ()):
                if handler not in found:
                    found.append(handler)
        return found

    def __delitem__(self, key: type[typing.Any]) -> None:
        raise TypeError("EventMap has no delete method")
