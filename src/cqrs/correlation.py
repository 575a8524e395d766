"""The correlation id of the request or saga being handled, for step code and logs."""

from __future__ import annotations

import contextvars
import logging
import uuid

__all__ = ["CorrelationIdFilter", "get_correlation_id", "new_correlation_id", "set_correlation_id"]

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cqrs_correlation_id", default=None
)
_saga_id: contextvars.ContextVar[uuid.UUID | None] = contextvars.ContextVar(
    "cqrs_saga_id", default=None
)


def get_correlation_id() -> str | None:
    """The correlation id of the current request or saga run, if any."""
    return _correlation_id.get()


def set_correlation_id(value: str | None) -> contextvars.Token[str | None]:
    """Set the current correlation id; returns a token for ``reset_correlation_id``."""
    return _correlation_id.set(value)


def reset_correlation_id(token: contextvars.Token[str | None]) -> None:
    _correlation_id.reset(token)


def new_correlation_id() -> str:
    """A fresh correlation id (a UUID4 in hex)."""
    return uuid.uuid4().hex


def get_saga_id() -> uuid.UUID | None:
    """The id of the saga whose step is running, if any."""
    return _saga_id.get()


class CorrelationIdFilter(logging.Filter):
    """Adds ``correlation_id`` and ``saga_id`` attributes to every log record.

    Attach it to a handler, then use ``%(correlation_id)s`` in its format.
    A record that already carries one of them (the saga lifecycle records of
    `cqrs.telemetry.logs` pass both as ``extra``) keeps its own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = _correlation_id.get() or "-"
        if getattr(record, "saga_id", None) is None:
            saga_id = _saga_id.get()
            record.saga_id = str(saga_id) if saga_id is not None else "-"
        return True


_MAX_LENGTH = 128
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+=@")


def accept_correlation_id(value: str | None) -> str:
    """The incoming header value if it is a sane id, else a fresh one.

    Values longer than 128 characters or with characters outside
    ``[A-Za-z0-9-_.:/+=@]`` are replaced, so logs and stored records never
    carry attacker-chosen control characters.
    """
    if value and len(value) <= _MAX_LENGTH and all(c in _ALLOWED for c in value):
        return value
    return new_correlation_id()
