"""Handing a recorded step's events on: the event-dispatch run hook.

Events are handed on after the step that produced them is recorded, before
the stream yields that step's result; a failing handler or broker is logged
and does not fail the saga (the step is already committed). For delivery to
a broker that survives crashes, use the outbox instead.
"""

from __future__ import annotations

import asyncio
import logging
import typing

from cqrs.events.event import INotificationEvent
from cqrs.events.event_emitter import EventEmitter
from cqrs.events.map import EventMap
from cqrs.saga.hooks import RunInfo, SagaHook

if typing.TYPE_CHECKING:
    from cqrs.message_brokers.protocol import MessageBroker

__all__ = ["EventDispatchHook", "EventDispatcher"]

logger = logging.getLogger("cqrs.events")


class EventDispatcher:
    """Emits a step's events and their handlers' follow-ups, breadth first.

    ``concurrent`` lets up to ``max_concurrent`` events be handled at once
    (python-cqrs's ``concurrent_event_handle_enable`` and
    ``max_concurrent_event_handlers``); by default one at a time, in order.
    ``broker_notifications``: whether notification events go to the emitter's
    broker (off when the outbox carries them).
    """

    def __init__(
        self,
        event_map: EventMap | None = None,
        container: typing.Any = None,
        *,
        emitter: EventEmitter | None = None,
        message_broker: MessageBroker | None = None,
        max_concurrent: int = 1,
        concurrent: bool = False,
        broker_notifications: bool = True,
    ) -> None:
        if emitter is None:
            if event_map is None:
                raise TypeError("EventDispatcher needs an event_map and a container, or an emitter")
            emitter = EventEmitter(event_map, container, message_broker)
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self.emitter = emitter
        self.max_concurrent = max_concurrent
        self.concurrent = concurrent and max_concurrent > 1
        self.broker_notifications = broker_notifications

    def _wanted(self, event: object) -> bool:
        if self.emitter.event_map.handlers_for(type(event)):
            return True
        return (
            self.broker_notifications
            and self.emitter.message_broker is not None
            and isinstance(event, INotificationEvent)
        )

    async def _emit(self, event: object, container: typing.Any) -> typing.Sequence[object]:
        emitter = self.emitter
        if not self.broker_notifications and isinstance(event, INotificationEvent):
            if not emitter.event_map.handlers_for(type(event)):
                return ()
            broker, emitter.message_broker = emitter.message_broker, None
            try:
                return await _emit_logged(emitter, event, container, sends=False)
            finally:
                emitter.message_broker = broker
        return await _emit_logged(emitter, event, container, sends=True)

    async def dispatch(self, events: typing.Iterable[object], container: typing.Any = None) -> None:
        """Hand ``events`` (and the follow-ups their handlers produce) on."""
        queue = [event for event in events if self._wanted(event)]
        while queue:
            if self.concurrent and len(queue) > 1:
                limit = asyncio.Semaphore(self.max_concurrent)
                batches = await asyncio.gather(*(self._emit_limited(limit, event, container) for event in queue))
                follow_ups = [event for batch in batches for event in batch]
            else:
                follow_ups = []
                for event in queue:
                    follow_ups.extend(await self._emit(event, container))
            queue = [event for event in follow_ups if self._wanted(event)]

    async def _emit_limited(
        self, limit: asyncio.Semaphore, event: object, container: typing.Any
    ) -> typing.Sequence[object]:
        async with limit:
            return await self._emit(event, container)

    def hook(self) -> EventDispatchHook:
        """The run hook that dispatches each recorded step's (and compensation's) events."""
        return EventDispatchHook(self)


async def _emit_logged(
    emitter: EventEmitter, event: object, container: typing.Any, *, sends: bool
) -> typing.Sequence[object]:
    try:
        return await emitter.emit(event, container=container)
    except Exception:
        logger.exception("Event %s could not be %s", type(event).__qualname__, "sent" if sends else "handled")
        return ()


class EventDispatchHook(SagaHook):
    """Dispatches the events of each committed step and compensation, in the run's container scope."""

    __slots__ = ("dispatcher",)

    def __init__(self, dispatcher: EventDispatcher) -> None:
        self.dispatcher = dispatcher

    def step_completed(
        self, run: RunInfo, step: str, result: typing.Any, events: typing.Sequence[object]
    ) -> typing.Awaitable[None] | None:
        return self.dispatcher.dispatch(events, getattr(run, "container", None)) if events else None

    def step_compensated(
        self, run: RunInfo, step: str, events: typing.Sequence[object]
    ) -> typing.Awaitable[None] | None:
        return self.dispatcher.dispatch(events, getattr(run, "container", None)) if events else None
