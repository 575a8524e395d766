"""The exception names python-cqrs code catches.

The saga engine raises subclasses of these that say more: `SagaNotBoundError`
is a `SagaDoesNotExist`, and a stale `update_context` raises
`cqrs.saga.exceptions.SagaConcurrencyError`, a `SagaConcurrencyError` here.
"""

from __future__ import annotations

__all__ = ["RequestHandlerDoesNotExist", "RequestHandlerTypeError", "SagaConcurrencyError", "SagaDoesNotExist"]


class RequestHandlerDoesNotExist(Exception):
    """No handler is bound to a request type (python-cqrs's request mediator; kept for imports)."""


class RequestHandlerTypeError(Exception):
    """A request handler has the wrong type (python-cqrs's request mediator; kept for imports)."""


class SagaDoesNotExist(Exception):
    """No saga is bound to a context type."""


class SagaConcurrencyError(Exception):
    """A saga was changed by another writer since it was read."""
