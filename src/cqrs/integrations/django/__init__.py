"""Django adapter of the saga runtime: settings, the saga vocabulary for views, atomic starts, routes.

In ``settings.py``::

    INSTALLED_APPS = [..., "cqrs.integrations.django"]
    MIDDLEWARE = ["cqrs.integrations.django.CorrelationIdMiddleware", ...]
    CQRS_SAGA = {
        "SAGAS": ["orders.sagas.OrderSaga"],            # dotted paths
        "CONTAINER": "orders.sagas.build_container",    # optional: returns a di.Container
        # "STORAGE_URL": "postgresql+asyncpg://...",    # default: DATABASES["default"]
    }

In views (the same names as the FastAPI and Flask integrations)::

    from cqrs.integrations import django as sagas

    def create_order(request):
        context = sagas.read_saga_context(request, OrderContext)    # problem 400/413/422 on bad input
        with transaction.atomic():
            order = Order.objects.create(...)
            saga_id = sagas.atomic_saga_start(OrderSaga, context)  # or start_saga_on_commit
        return JsonResponse({"saga_id": str(saga_id)}, status=202)

    def quote(request):                                # run to the end (202 with a link if it takes longer)
        result = sagas.run_saga(QuoteContext(...), timeout=10)

    async def quote_async(request):
        result = await sagas.arun_saga(QuoteContext(...), timeout=10)

    urlpatterns += sagas.operator_routes()             # /sagas, /sagas/<id>[/history|/diagram], /health

Management commands: ``saga_worker`` (runs pending and interrupted sagas),
``saga_relay`` (publishes the outbox), ``saga_list`` and ``saga_check``. Without ``STORAGE_URL`` sagas live in the
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

from django.core.exceptions import SynchronousOnlyOperation  # type: ignore[import-untyped]
from django.http import StreamingHttpResponse  # type: ignore[import-untyped]
from django.urls import re_path  # type: ignore[import-untyped]
from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]

from cqrs.config import SagaConfig
from cqrs.integrations._endpoints import Authorize, problem_answer, routes_for
from cqrs.integrations._endpoints import OperatorAction as OperatorAction
from cqrs.integrations._requests import Problem as Problem
from cqrs.integrations._requests import build_context, parse_json_object
from cqrs.integrations._runtime import SagaResult as SagaResult
from cqrs.integrations._runtime import SagaStillRunning as SagaStillRunning
from cqrs.integrations._sync import ASYNC_TWINS, VOCABULARY, SyncSagaApi, read_limited
from cqrs.integrations.django import _runtime
from cqrs.integrations.django._runtime import setup, shutdown
from cqrs.integrations.django.middleware import CorrelationIdMiddleware
from cqrs.integrations.django.middleware import render as render
from cqrs.integrations.django.transaction import atomic_saga_start, start_saga_on_commit

__all__ = [
    *VOCABULARY, *ASYNC_TWINS, "CorrelationIdMiddleware", "atomic_saga_start", "get_saga_config",
    "problem_response", "read_json", "setup", "shutdown", "start_saga_on_commit",
]

C = typing.TypeVar("C")


def get_saga_config() -> SagaConfig:
    """The `SagaConfig` built from ``settings.CQRS_SAGA``, with the storage URL it uses now."""
    settings = _runtime.current().require()
    return settings.prepare(settings.config)


def _sse_response(saga_id: uuid.UUID, chunks: typing.Iterator[str]) -> typing.Any:
    response = StreamingHttpResponse(chunks, content_type="text/event-stream")
    for name, value in (("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"), ("X-Saga-ID", str(saga_id))):
        response[name] = value
    return response


_api = SyncSagaApi(_runtime.current_runtime, _sse_response, refuse=SynchronousOnlyOperation)
run_saga, arun_saga, start_saga, astart_saga, saga_event_stream = _api.vocabulary()[:5]
saga_status, asaga_status, saga_history, asaga_history, saga_diagram, asaga_diagram = _api.vocabulary()[5:11]
list_sagas, alist_sagas, wait_for_sagas = _api.vocabulary()[11:]


# -- request bodies and errors ------------------------------------------------------------------


def _body(request: typing.Any, limit: int) -> bytes:
    declared = request.META.get("CONTENT_LENGTH") or None
    if hasattr(request, "_body"):  # already read (by middleware, a test client)
        from cqrs.integrations._requests import check_content_length

        check_content_length(declared, max_bytes=limit)
        return typing.cast(bytes, request._body)
    return read_limited(request, declared, limit)


def read_json(request: typing.Any, *, max_bytes: int | None = None) -> dict[str, typing.Any]:
    """The request's JSON object body; `Problem` 413 when too large, 400 when not a JSON object."""
    limit = max_bytes if max_bytes is not None else get_saga_config().max_body_bytes
    return parse_json_object(_body(request, limit), max_bytes=limit)


def read_saga_context(request: typing.Any, context_type: type[C], *, max_bytes: int | None = None) -> C:
    """Build a ``context_type`` (dataclass or pydantic model) from the request's JSON body.

    Raises `Problem`: 413 over the limit, 400 for a body that is not a JSON
    object (or nests too deeply, or holds text no database stores), 422
    naming each field that does not fit. `CorrelationIdMiddleware` answers
    it as problem details.
    """
    return typing.cast(C, build_context(context_type, read_json(request, max_bytes=max_bytes)))


def problem_response(problem: Problem) -> typing.Any:
    """An ``HttpResponse`` of a `Problem`: RFC 9457 problem details (``application/problem+json``)."""
    return render(problem_answer(problem))


# -- routes ----------------------------------------------------------------------------------------


def django_path(prefix: str, path: str) -> str:
    """A route template (``/sagas/{saga_id}``) as a Django regex (an optional trailing slash)."""
    pattern = (prefix.rstrip("/") + path).lstrip("/")
    pattern = pattern.replace("{correlation_id}", "(?P<correlation_id>.+?)")
    for name in ("saga_id", "source"):
        pattern = pattern.replace("{" + name + "}", f"(?P<{name}>[^/]+)")
    return f"^{pattern}/?$"


def allow(method: str, request: typing.Any) -> typing.Any:
    """None for a request of ``method`` (HEAD for GET), else the 405 problem."""
    if request.method == method or (method == "GET" and request.method == "HEAD"):
        return None
    return problem_response(Problem(405, f"Use {method}, not {request.method}", headers={"Allow": method}))


def operator_routes(
    *, prefix: str = "/sagas", health: str | None = "/health", authorize: Authorize | None = None
) -> list[typing.Any]:
    """URL patterns of the operator routes, read-only unless ``authorize`` is given.

    The routes of `cqrs.integrations.fastapi.operator_routes` (``urlpatterns
    += operator_routes()``): list, status, history, diagram and health; with
    ``authorize(request, action)`` (a plain function, True to allow) also
    recover, park and reset (CSRF-exempt: the hook authenticates them).
    """
    patterns = []
    for route in routes_for(authorize):

        @csrf_exempt  # type: ignore[untyped-decorator]
        def view(request: typing.Any, saga_id: str = "", *, _route: typing.Any = route) -> typing.Any:
            refused = allow(_route.method, request)
            if refused is not None:
                return refused
            query = {key: request.GET.getlist(key) for key in request.GET}
            return render(
                _api.operator(
                    _route.name, request=request, saga_id=saga_id, query=query,
                    read_body=lambda limit: _body(request, limit), authorize=authorize,
                )
            )

        patterns.append(re_path(django_path(prefix, route.path), view, name=f"cqrs-saga-{route.name}"))
    if health is not None:

        def health_view(request: typing.Any) -> typing.Any:
            return allow("GET", request) or render(_api.health())

        patterns.append(re_path(django_path(health, ""), health_view, name="cqrs-saga-health"))
    return patterns
