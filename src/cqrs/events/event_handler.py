"""Event handlers: what an event is handed to."""

from __future__ import annotations

import abc
import typing

__all__ = ["EventHandler"]

E = typing.TypeVar("E", contravariant=True)


class EventHandler(abc.ABC, typing.Generic[E]):
    """Handles one type of event; bound to it in an `EventMap`, built from the container.

    ``events`` (empty by default) are follow-up events the handler produced;
    they are handed on after ``handle`` returns. A class with an async
    ``handle`` works without subclassing this.
    """

    @abc.abstractmethod
    async def handle(self, event: E) -> None:
        """Handle ``event``."""

    @property
    def events(self) -> typing.Sequence[object]:
        """Follow-up events, handed on after `handle` returns."""
        return ()
