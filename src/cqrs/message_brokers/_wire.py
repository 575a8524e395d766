"""How a `Message` travels: its body bytes and its headers, the same on every broker adapter.

The body is the payload as JSON (or ``payload_bytes`` as given). The
headers are the message's own (an outbox row's carry its message id, saga
id and correlation id) plus, always, the message id and the message name,
so a consumer reads the same fields whichever broker brought the message.
"""

from __future__ import annotations

import typing

import pydantic_core

from cqrs.message_brokers.protocol import Message

__all__ = [
    "CONTENT_TYPE_JSON",
    "HEADER_CORRELATION_ID",
    "HEADER_MESSAGE_ID",
    "HEADER_MESSAGE_NAME",
    "HEADER_SAGA_ID",
    "message_body",
    "message_headers",
]

HEADER_MESSAGE_ID = "message-id"
HEADER_SAGA_ID = "saga-id"
HEADER_CORRELATION_ID = "correlation-id"
HEADER_MESSAGE_NAME = "message-name"
CONTENT_TYPE_JSON = "application/json"


def message_body(message: Message) -> tuple[bytes, str]:
    """The body and its content type: ``payload_bytes`` when set, else the payload as JSON."""
    if message.payload_bytes is not None:
        return message.payload_bytes, message.content_type or "application/octet-stream"
    return pydantic_core.to_json(message.payload), message.content_type or CONTENT_TYPE_JSON


def message_headers(message: Message) -> dict[str, str]:
    """The message's headers with its id and name set (the id of the `Message` wins over a header's)."""
    headers: dict[str, str] = {str(k): str(v) for k, v in (message.headers or {}).items()}
    headers[HEADER_MESSAGE_ID] = str(message.message_id)
    headers.setdefault(HEADER_MESSAGE_NAME, message.message_name)
    return headers


def text_headers(raw: typing.Mapping[typing.Any, typing.Any] | None) -> dict[str, str]:
    """Received headers as text (brokers hand back bytes or typed values)."""
    out: dict[str, str] = {}
    for key, value in (raw or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        out[name] = value.decode() if isinstance(value, bytes) else str(value)
    return out
