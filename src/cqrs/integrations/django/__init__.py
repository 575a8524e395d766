"""Django integration: settings, sync and async view helpers, atomic starts, middleware, commands.

In ``settings.py``::

    INSTALLED_APPS = [..., "cqrs.integrations.django"]
    MIDDLEWARE = ["cqrs.integrations.django.CorrelationIdMiddleware", ...]
    CQRS_SAGA = {
        "SAGAS": ["orders.sagas.OrderSaga"],            # dotted paths
        "CONTAINER": "orders.sagas.build_container",    # optional: returns a di.Container
        # "STORAGE_URL": "postgresql+asyncpg://...",    # default: DATABASES["default"]
        "COMPENSATION_RETRY_COUNT": 3,
        "LOGGING": True,
        "CORRELATION_HEADER": "X-Correlation-ID",
    }

In views::

    from django.db import transaction
    from cqrs.integrations import django as sagas

    def create_order(request):                       # sync view
        with transaction.atomic():
            order = Order.objects.create(...)
            saga_id = sagas.atomic_saga_start(OrderSaga, OrderContext(order_id=order.order_id, ...))
        return JsonResponse({"saga_id": str(saga_id)}, status=202)

    def quote(request):                               # sync view, waits for the outcome
        outcome = sagas.run_saga(QuoteContext(...))

    async def quote_async(request):                   # async view
        outcome = await sagas.arun_saga(QuoteContext(...))

Management commands: ``saga_worker`` (runs pending and interrupted sagas),
``saga_list`` and ``saga_check``. Without ``STORAGE_URL`` sagas live in the
project's own database (SQLite file or PostgreSQL); ``manage.py migrate``
creates their tables.

Needs ``pip install 'cqrs-saga[django]'`` (plus ``[sqlite]`` or ``[postgres]``
for the SQL storage).
"""

from __future__ import annotations

try:
    import django  # type: ignore[import-untyped]  # noqa: F401
except ImportError as _error:  # pragma: no cover - exercised in a subprocess with Django hidden
    raise ImportError(
        "cqrs.integrations.django needs Django, which is not installed: pip install 'cqrs-saga[django]'"
    ) from _error

import typing
import uuid

from django.http import JsonResponse  # type: ignore[import-untyped]

from cqrs.config import SagaConfig
from cqrs.integrations._requests import BadRequest, build_context, check_content_length, parse_json_object
from cqrs.integrations.django import _runtime
from cqrs.integrations.django._runtime import setup, shutdown
from cqrs.integrations.django.middleware import CorrelationIdMiddleware
from cqrs.integrations.django.transaction import atomic_saga_start
from cqrs.saga.mediator import SagaOutcome

__all__ = [
    "BadRequest",
    "CorrelationIdMiddleware",
    "arun_saga",
    "asaga_diagram",
    "asaga_status",
    "astart_saga",
    "atomic_saga_start",
    "error_response",
    "get_saga_config",
    "read_json",
    "read_saga_context",
    "run_saga",
    "saga_diagram",
    "saga_status",
    "setup",
    "shutdown",
    "start_saga",
    "wait_for_sagas",
]

C = typing.TypeVar("C")


def get_saga_config() -> SagaConfig:
    """The `SagaConfig` built from ``settings.CQRS_SAGA`` (its storage opens on first use)."""
    return _runtime.current().config


# -- running sagas ------------------------------------------------------------------------------


def run_saga(
    saga_or_context: typing.Any,
    context: typing.Any = None,
    *,
    saga_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    timeout: float | None = None,
) -> SagaOutcome:
    """Run a saga to its end from a sync view and return its `SagaOutcome`.

    Call as ``run_saga(context)`` (the saga bound to the context's type) or
    ``run_saga(OrderSaga, context)``. The saga runs on the process's saga loop
    while this thread waits (no event loop per request). A failing step does
    not raise: the outcome says ``failed`` and carries the error. After
    ``timeout`` seconds `TimeoutError` is raised and the saga runs on. The
    correlation id defaults to the request's.
    """
    runtime = _runtime.current()
    _, context = runtime.saga_for(saga_or_context, context)
    return _runtime.block(
        _runtime.run_coro(runtime, context, saga_id, correlation_id), timeout
    )


async def arun_saga(
    saga_or_context: typing.Any,
    context: typing.Any = None,
    *,
    saga_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
) -> SagaOutcome:
    """`run_saga` for async views: awaits the run without blocking the view's event loop.

    If the view is cancelled (client gone), the saga still runs to its end.
    """
    runtime = _runtime.current()
    _, context = runtime.saga_for(saga_or_context, context)
    return await _runtime.await_in_loop(
        _runtime.run_coro(runtime, context, saga_id, correlation_id)
    )


def start_saga(
    saga_or_context: typing.Any,
    context: typing.Any = None,
    *,
    saga_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
) -> uuid.UUID:
    """Record a saga, run it in the background, and return its id at once (sync views).

    The saga is stored (with this process's lease) before this returns; if the
    process dies before the run ends, ``saga_worker`` finishes it. Not tied to
    a Django transaction: use `atomic_saga_start` for that.
    """
    runtime = _runtime.current()
    _, context = runtime.saga_for(saga_or_context, context)
    recorded = _runtime.block(
        _runtime.record_coro(runtime, context, saga_id, correlation_id)
    )
    runtime.hand_off(recorded)
    return recorded


async def astart_saga(
    saga_or_context: typing.Any,
    context: typing.Any = None,
    *,
    saga_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
) -> uuid.UUID:
    """`start_saga` for async views."""
    runtime = _runtime.current()
    _, context = runtime.saga_for(saga_or_context, context)
    recorded = await _runtime.await_in_loop(
        _runtime.record_coro(runtime, context, saga_id, correlation_id)
    )
    runtime.hand_off(recorded)
    return recorded


def wait_for_sagas(timeout: float | None = None) -> bool:
    """Wait for the background runs this process started; False if some still run after ``timeout``."""
    return _runtime.current().wait(timeout)


# -- status and diagrams ------------------------------------------------------------------------


def saga_status(saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
    """The stored state of a saga as a JSON-ready dict (sync views).

    Raises `BadRequest` (422 for a malformed id, 404 for an unknown one);
    turn it into a response with `error_response`.
    """
    runtime = _runtime.current()
    return _runtime.block(_runtime.status_coro(runtime, saga_id))


async def asaga_status(saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
    """`saga_status` for async views."""
    runtime = _runtime.current()
    return await _runtime.await_in_loop(_runtime.status_coro(runtime, saga_id))


def saga_diagram(saga_id: uuid.UUID | str) -> str:
    """Mermaid source of a saga run, its completed, compensated and failed steps marked (sync views)."""
    runtime = _runtime.current()
    return _runtime.block(_runtime.diagram_coro(runtime, saga_id))


async def asaga_diagram(saga_id: uuid.UUID | str) -> str:
    """`saga_diagram` for async views."""
    runtime = _runtime.current()
    return await _runtime.await_in_loop(_runtime.diagram_coro(runtime, saga_id))


# -- request bodies and errors ------------------------------------------------------------------


def read_json(request: typing.Any, *, max_bytes: int | None = None) -> dict[str, typing.Any]:
    """The request's JSON object body; `BadRequest` 413 when too large, 400 when not a JSON object.

    ``max_bytes`` defaults to ``CQRS_SAGA["MAX_BODY_BYTES"]`` (1 MiB).
    """
    limit = max_bytes if max_bytes is not None else get_saga_config().max_body_bytes
    check_content_length(request.META.get("CONTENT_LENGTH") or None, max_bytes=limit)
    return parse_json_object(request.body, max_bytes=limit)


def read_saga_context(request: typing.Any, context_type: type[C], *, max_bytes: int | None = None) -> C:
    """Build a ``context_type`` (dataclass or pydantic model) from the request's JSON body.

    Raises `BadRequest`: 413 for a body over the limit, 400 for a body that is
    not a JSON object or whose fields do not fit (the message names each field).
    """
    return typing.cast(C, build_context(context_type, read_json(request, max_bytes=max_bytes)))


def error_response(error: BadRequest) -> typing.Any:
    """A `JsonResponse` for a `BadRequest`: ``{"error": ..., "details": [...]}`` with its status."""
    return JsonResponse(error.body(), status=error.status)
