"""Turning request bodies into saga contexts, with errors a client can act on."""

from __future__ import annotations

import json
import typing
import uuid

from cqrs.saga import _serialization
from cqrs.saga.exceptions import ContextValidationError


class BadRequest(Exception):
    """A request the integrations answer with a 4xx and a JSON body."""

    def __init__(self, status: int, message: str, details: typing.Any = None) -> None:
        self.status = status
        self.message = message
        self.details = details
        super().__init__(message)

    def body(self) -> dict[str, typing.Any]:
        body: dict[str, typing.Any] = {"error": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


def check_content_length(value: str | None, *, max_bytes: int) -> None:
    """Reject a declared body size before reading it: 413 if over ``max_bytes``, 400 if not a number.

    Callers must still count the bytes they read (`parse_json_object` does):
    a client may send no ``Content-Length`` or a wrong one.
    """
    if value is None:
        return
    try:
        length = int(value)
    except ValueError:
        raise BadRequest(400, f"Content-Length {value!r} is not a number") from None
    if length < 0:
        raise BadRequest(400, f"Content-Length {value!r} is not a number of bytes")
    if length > max_bytes:
        raise BadRequest(413, f"Request body is {length} bytes; the limit is {max_bytes}")


def parse_json_object(raw: bytes, *, max_bytes: int) -> dict[str, typing.Any]:
    """Decode a JSON object body: 413 if too large, 400 if not JSON or not an object."""
    if len(raw) > max_bytes:
        raise BadRequest(413, f"Request body is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(400, f"Request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(400, f"Request body must be a JSON object, got {type(value).__name__}")
    return value


def build_context(context_type: type[typing.Any], data: typing.Mapping[str, typing.Any]) -> typing.Any:
    """Validate ``data`` into a context; 400 naming each bad field."""
    try:
        return _serialization.validate_context(context_type, data)
    except ContextValidationError as error:
        raise BadRequest(400, str(error), error.problems) from None


def parse_saga_id(raw: uuid.UUID | str) -> uuid.UUID:
    """A saga id from a URL (or a caller's UUID, returned as it is): 422 if it is not a UUID."""
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(raw)
    except (ValueError, TypeError, AttributeError):  # AttributeError: not a string at all
        raise BadRequest(422, f"{raw!r} is not a saga id (expected a UUID)") from None
