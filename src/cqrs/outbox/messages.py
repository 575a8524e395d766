"""Turning a notification event into the outbox message that carries it."""

from __future__ import annotations

import typing
import uuid

from cqrs.events.event import INotificationEvent
from cqrs.outbox.models import OutboxMessage
from cqrs.saga import _serialization

__all__ = ["HEADER_CORRELATION_ID", "HEADER_EVENT_NAME", "HEADER_MESSAGE_ID", "HEADER_SAGA_ID", "outbox_message"]

HEADER_MESSAGE_ID = "message-id"
HEADER_SAGA_ID = "saga-id"
HEADER_CORRELATION_ID = "correlation-id"
HEADER_EVENT_NAME = "event-name"


def outbox_message(
    event: INotificationEvent[typing.Any],
    *,
    saga_id: uuid.UUID,
    correlation_id: str | None,
    trace_context: typing.Mapping[str, str] | None = None,
) -> OutboxMessage:
    """The message for ``event``: its ``event_id`` as the message id, the whole event as JSON payload.

    Headers: the message id, the saga id, the correlation id (when known), the
    event's name, and the trace context fields (``traceparent``, ...).
    """
    payload = _serialization.dump_json(event)
    headers = {
        **(trace_context or {}),
        HEADER_MESSAGE_ID: str(event.event_id),
        HEADER_SAGA_ID: str(saga_id),
        HEADER_EVENT_NAME: event.event_name,
    }
    if correlation_id is not None:
        headers[HEADER_CORRELATION_ID] = correlation_id
    return OutboxMessage(event.event_id, event.topic, type(event).__name__, payload, headers)
