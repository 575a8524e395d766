"""FastAPI (and Starlette) adapter of the saga runtime: lifespan, dependencies, middleware, routes.

(Longer than the Flask and Django adapters, and kept whole: FastAPI declares each route with typed
parameters and response models for OpenAPI, one declaration per endpoint; the behaviour is all in
the runtime.)

Everything runs in `cqrs.integrations._runtime.SagaRuntime`; this module
maps it onto FastAPI's idioms::

    from fastapi import FastAPI
    from cqrs.config import SagaConfig
    from cqrs.integrations import fastapi as saga_api

    config = SagaConfig.from_env(sagas=[OrderSaga], container=container)
    app = FastAPI()
    saga_api.init_app(app, config, recovery=True)       # lifespan, middleware, problem answers
    app.include_router(saga_api.operator_routes())      # /sagas, /sagas/{id}[/history|/diagram], /health

    @app.post("/orders", status_code=202)
    async def create_order(order: OrderRequest, runtime: saga_api.Runtime) -> dict[str, str]:
        saga_id = await runtime.start_saga(OrderContext.from_request(order))
        return {"saga_id": str(saga_id)}

Needs ``pip install 'cqrs-saga[fastapi]'``.

Longer than the Flask and Django adapters because FastAPI wants more
declared: signatures it can document in OpenAPI, exception handlers, and a
pure ASGI middleware (correlation ids and body limits); the work itself is
all in the shared runtime and endpoints.
"""

from __future__ import annotations

try:
    import fastapi
    from fastapi import params as _fastapi_params
except ImportError as _error:  # pragma: no cover - exercised in a test with fastapi hidden
    raise ImportError(
        "cqrs.integrations.fastapi needs FastAPI, which is not installed: "
        "pip install 'cqrs-saga[fastapi]'"
    ) from _error

import contextlib
import inspect
import typing
import uuid

import typing_extensions
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cqrs import correlation
from cqrs.config import SagaConfig
from cqrs.config import get_config as _global_config
from cqrs.integrations._endpoints import (
    Answer,
    Authorize,
    OperatorAction,
    authorize_async,
    deliver_answer,
    event_status_answer,
    health_answer,
    operator_answer,
    problem_answer,
    routes_for,
    still_running_answer,
)
from cqrs.integrations._requests import Problem, build_context, check_content_length, parse_json_object
from cqrs.integrations._runtime import RecoveryOption, SagaResult, SagaRuntime, SagaStillRunning
from cqrs.integrations._sync import VOCABULARY
from cqrs.integrations._webhooks import WebhookEndpoint, WebhookOptions
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.storage.protocol import SagaStorage

__all__ = [
    *VOCABULARY, "Runtime", "SagaContextMiddleware", "SagaRuntime", "create_lifespan", "get_config", "get_mediator",
    "get_runtime", "get_storage", "init_app", "saga_context", "saga_lifespan", "webhook_routes",
]

C = typing.TypeVar("C")
Lifespan = typing.Callable[[typing.Any], typing.AsyncContextManager[typing.Any]]
_STATE_ATTR = "saga"


# -- lifespan ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def saga_lifespan(
    app: typing.Any,
    config: SagaConfig | None = None,
    *,
    recovery: RecoveryOption = None,
    shutdown_grace: float = 10.0,
    status_path: str = "/sagas",
) -> typing.AsyncIterator[SagaRuntime]:
    """Run sagas for the life of ``app``; use inside your own lifespan, or via `init_app` / `create_lifespan`.

    On enter: opens ``config``'s storage (``config`` defaults to the one
    given to `cqrs.config.configure`) in a `SagaRuntime` kept on
    ``app.state.saga``, and starts a recovery worker if ``recovery`` (or
    ``config.recovery``) asks for one. On exit: stops recovery, waits up to
    ``shutdown_grace`` seconds for background and streamed runs (runs still
    going are cancelled and stay recoverable), then closes the storage.
    """
    runtime = SagaRuntime(
        config if config is not None else _global_config(),
        recovery=recovery, shutdown_grace=shutdown_grace, status_path=status_path,
    )
    try:
        await runtime.open()
        setattr(app.state, _STATE_ATTR, runtime)
        yield runtime
    finally:
        try:
            await runtime.aclose()
        finally:
            with contextlib.suppress(AttributeError):
                delattr(app.state, _STATE_ATTR)


def create_lifespan(
    config: SagaConfig | None = None,
    *,
    recovery: RecoveryOption = None,
    shutdown_grace: float = 10.0,
    status_path: str = "/sagas",
    lifespan: Lifespan | None = None,
) -> Lifespan:
    """A ``FastAPI(lifespan=...)`` running `saga_lifespan` around your own ``lifespan``.

    Your lifespan starts after the saga storage is open and ends before it is
    closed; whatever it yields is passed on as the lifespan state.
    """

    @contextlib.asynccontextmanager
    async def _lifespan(app: typing.Any) -> typing.AsyncIterator[typing.Any]:
        async with saga_lifespan(
            app, config, recovery=recovery, shutdown_grace=shutdown_grace, status_path=status_path
        ):
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state

    return _lifespan


def init_app(
    app: fastapi.FastAPI,
    config: SagaConfig | None = None,
    *,
    recovery: RecoveryOption = None,
    shutdown_grace: float = 10.0,
    status_path: str = "/sagas",
) -> None:
    """Set ``app`` up for sagas: `saga_lifespan` around its own lifespan, `SagaContextMiddleware`,
    and problem answers (``application/problem+json``) for `Problem`, request validation errors and
    HTTP errors, and 202 with the status link for `SagaStillRunning`. Call before the app starts.
    """
    own = app.router.lifespan_context
    app.router.lifespan_context = create_lifespan(
        config, recovery=recovery, shutdown_grace=shutdown_grace, status_path=status_path, lifespan=own
    )
    app.add_middleware(SagaContextMiddleware)
    app.add_exception_handler(Problem, _on_problem)  # type: ignore[arg-type]
    app.add_exception_handler(SagaStillRunning, _on_still_running)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _on_invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http_error)  # type: ignore[arg-type]


# -- answers -------------------------------------------------------------------------------------


class _HTTPProblem(Problem, StarletteHTTPException):  # type: ignore[misc]  # both keep the headers
    """A `Problem` FastAPI answers even without `init_app` (as ``{"detail": ...}``)."""

    def __init__(self, problem: Problem) -> None:
        StarletteHTTPException.__init__(self, problem.status, problem.detail, problem.headers or None)
        Problem.__init__(self, problem.status, problem.detail, problem.errors, headers=problem.headers)


class _HTTPStillRunning(SagaStillRunning, StarletteHTTPException):
    """A `SagaStillRunning` FastAPI answers 202 with the status link even without `init_app`."""

    def __init__(self, error: SagaStillRunning) -> None:
        StarletteHTTPException.__init__(self, 202, str(error), {"Location": error.status_url})
        SagaStillRunning.__init__(self, error.saga_id, error.timeout, error.status_url)


@contextlib.contextmanager
def _answerable() -> typing.Iterator[None]:
    """Re-raise problems as exceptions FastAPI answers by itself (`init_app` answers them as problem details)."""
    try:
        yield
    except (_HTTPProblem, _HTTPStillRunning):
        raise
    except Problem as problem:
        raise _HTTPProblem(problem) from None
    except SagaStillRunning as error:
        raise _HTTPStillRunning(error) from None


def _render(answer: Answer) -> Response:
    return Response(answer.content(), answer.status, answer.headers, answer.media_type)


async def _on_problem(request: Request, error: Problem) -> Response:
    return _render(problem_answer(error))


async def _on_still_running(request: Request, error: SagaStillRunning) -> Response:
    return _render(still_running_answer(error))


async def _on_http_error(request: Request, error: StarletteHTTPException) -> Response:
    detail = error.detail if isinstance(error.detail, str) else str(error.detail)
    return _render(problem_answer(Problem(error.status_code, detail, headers=error.headers)))


_NOT_AN_OBJECT = {"dict_type", "model_type", "dataclass_type", "model_attributes_type", "dataclass_exact_type"}


async def _on_invalid(request: Request, error: RequestValidationError) -> Response:
    errors = list(error.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return _render(problem_answer(Problem(400, "The request body is not valid JSON")))
    if any(tuple(e.get("loc", ())) == ("body",) and e.get("type") in _NOT_AN_OBJECT for e in errors):
        return _render(problem_answer(Problem(400, "The request body must be a JSON object")))
    problems = []
    for e in errors:
        loc = [str(part) for part in e.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:] if loc[0] == "body" else loc
        problems.append({"field": ".".join(loc) or "<body>", "message": str(e.get("msg", "invalid"))})
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return _render(problem_answer(Problem(422, f"Invalid request: {summary}", problems)))


# -- dependencies ------------------------------------------------------------------------------------


def get_runtime(request: Request) -> SagaRuntime:
    """Dependency: the app's `SagaRuntime` (``Depends(get_runtime)``, or annotate with `Runtime`)."""
    runtime = getattr(request.app.state, _STATE_ATTR, None)
    if not isinstance(runtime, SagaRuntime):
        raise RuntimeError(
            "No saga lifespan is running for this app: call cqrs.integrations.fastapi.init_app(app, config) "
            "(or FastAPI(lifespan=create_lifespan(config)))"
        )
    return runtime


#: ``runtime: Runtime`` in an endpoint's parameters gives the app's `SagaRuntime`.
Runtime = typing.Annotated[SagaRuntime, fastapi.Depends(get_runtime)]


def get_config(request: Request) -> SagaConfig:
    """Dependency: the app's `SagaConfig`."""
    return get_runtime(request).config


def get_storage(request: Request) -> SagaStorage:
    """Dependency: the app's open saga storage."""
    return get_runtime(request).storage


def get_mediator(request: Request) -> SagaMediator:
    """Dependency: the app's `SagaMediator` (built once, at startup, from its config)."""
    return get_runtime(request).mediator


# -- request bodies ------------------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it is known to pass ``limit`` bytes (header or bytes read)."""
    check_content_length(request.headers.get("content-length"), max_bytes=limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Problem(413, f"The request body is over the limit of {limit} bytes")
    return bytes(body)


async def read_saga_context(request: Request, context_type: type[C], *, max_bytes: int | None = None) -> C:
    """Build a ``context_type`` from the request's JSON body, or raise a 4xx `Problem`.

    413 over ``max_bytes`` (default: the config's ``max_body_bytes``); 400 for
    a body that is not a JSON object (or is nested too deeply, or holds text
    no database stores); 422 naming each field that does not fit.
    """
    limit = max_bytes if max_bytes is not None else get_config(request).max_body_bytes
    with _answerable():
        data = parse_json_object(await _read_body(request, limit), max_bytes=limit)
        return typing.cast(C, build_context(context_type, data))


def saga_context(
    context_type: type[C], *, max_bytes: int | None = None
) -> typing.Callable[[Request], typing.Awaitable[C]]:
    """Dependency factory: ``context: OrderContext = Depends(saga_context(OrderContext))``.

    Reads the body itself, whatever its content type (see `read_saga_context`
    for the checks and the problems). OpenAPI does not see such a body:
    where the schema matters, declare a pydantic model as the endpoint's body
    parameter instead (FastAPI then validates it; `init_app` answers its
    errors as problem details naming each field).
    """

    async def dependency(request: Request) -> C:
        return await read_saga_context(request, context_type, max_bytes=max_bytes)

    dependency.__name__ = f"saga_context_{context_type.__name__}"
    return dependency


# -- the vocabulary ------------------------------------------------------------------------------------


async def run_saga(
    request: Request,
    saga_or_context: typing.Any,
    context: typing.Any = None,
    *,
    saga_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    timeout: float | None = None,
) -> SagaResult:
    """Run a new saga to its end: `SagaRuntime.run_saga` of the app (`SagaStillRunning` after ``timeout``)."""
    with _answerable():
        return await get_runtime(request).run_saga(
            saga_or_context, context, saga_id=saga_id, correlation_id=correlation_id, timeout=timeout
        )


async def start_saga(
    request: Request,
    saga_or_context: typing.Any,
    context: typing.Any = None,
    *,
    saga_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
) -> uuid.UUID:
    """Record a new saga and run it in the background: `SagaRuntime.start_saga` of the app."""
    with _answerable():
        return await get_runtime(request).start_saga(
            saga_or_context, context, saga_id=saga_id, correlation_id=correlation_id
        )


async def saga_status(request: Request, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
    """The stored saga as JSON: `SagaRuntime.saga_status` of the app."""
    with _answerable():
        return await get_runtime(request).saga_status(saga_id)


async def saga_history(request: Request, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
    """The saga's step log: `SagaRuntime.saga_history` of the app."""
    with _answerable():
        return await get_runtime(request).saga_history(saga_id)


async def saga_diagram(request: Request, saga_id: uuid.UUID | str) -> str:
    """Mermaid source of the saga's run: `SagaRuntime.saga_diagram` of the app."""
    with _answerable():
        return await get_runtime(request).saga_diagram(saga_id)


async def list_sagas(request: Request, **filters: typing.Any) -> dict[str, typing.Any]:
    """A page of stored sagas: `SagaRuntime.list_sagas` of the app."""
    with _answerable():
        return await get_runtime(request).list_sagas(**filters)


async def saga_event_stream(
    request: Request,
    saga_or_context: typing.Any,
    context: typing.Any = None,
    *,
    saga_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    keepalive: float | None = 15.0,
) -> StreamingResponse:
    """Record a new saga, run it in the background, and answer with its progress as Server-Sent Events.

    Events (``event: <type>`` and a JSON ``data:`` line with the same
    ``type``): ``start`` (``saga_id``, ``saga``, ``correlation_id``,
    ``status_url``), ``step_completed``, ``step_failed``, ``compensating``,
    ``step_compensated`` / ``compensation_failed``, and last ``completed``,
    ``failed`` or ``interrupted``. A client that disconnects stops
    receiving, not the saga. The saga id is in ``X-Saga-ID``.
    """
    with _answerable():
        start, feed = await get_runtime(request).event_feed(
            saga_or_context, context, saga_id=saga_id, correlation_id=correlation_id
        )
    return StreamingResponse(
        feed.sse(start, keepalive=keepalive),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Saga-ID": str(feed.saga_id)},
    )


# -- routes ------------------------------------------------------------------------------------


_QUERIES = {
    "list": ("status", "name", "correlation_id", "older_than", "cursor", "limit"),
    "diagram": ("format",),
}


def _endpoint(
    handler: typing.Callable[..., typing.Awaitable[Response]],
    path_params: typing.Sequence[str],
    query: typing.Sequence[str] = (),
) -> typing.Callable[..., typing.Awaitable[Response]]:
    """``handler(request, **path_values)`` with a signature FastAPI documents (path values, list filters)."""

    async def endpoint(request: Request, **values: typing.Any) -> Response:
        return await handler(request, **{name: values[name] for name in path_params})

    parameters = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
    parameters += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str, default=fastapi.Path())
        for name in path_params
    ]
    parameters += [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY,
            annotation=list[str] | None if name == "status" else str | None, default=fastapi.Query(None),
        )
        for name in query
    ]
    endpoint.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return endpoint


def _query(request: Request) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        query.setdefault(key, []).append(value)
    return query


def operator_routes(
    *,
    prefix: str = "/sagas",
    health: str | None = "/health",
    authorize: Authorize | None = None,
    tags: typing.Sequence[str] = ("sagas",),
    dependencies: typing.Sequence[_fastapi_params.Depends] | None = None,
) -> fastapi.APIRouter:
    """An `APIRouter` with the operator routes, read-only unless ``authorize`` is given.

    ``GET {prefix}`` lists sagas (``status``, ``name``, ``correlation_id``,
    ``older_than``, ``limit``; ``cursor`` from the page's ``next_cursor``);
    ``GET {prefix}/{saga_id}`` its status (with owner, lease and recovery
    attempts), ``/history`` its step log, ``/diagram`` its Mermaid diagram
    (``?format=json``); ``GET {health}``. With ``authorize(request, action)``
    (sync or async, True to allow) also ``POST {prefix}/{saga_id}/recover``,
    ``/park`` (JSON ``{"reason"}``) and ``/reset``; a refusal is 403.
    Errors are problem details. Pass ``status_path`` to `init_app` when
    ``prefix`` is not ``/sagas``, so status links point here.
    """
    router = fastapi.APIRouter(tags=list(tags), dependencies=list(dependencies or ()))
    prefix = prefix.rstrip("/")
    for route in routes_for(authorize):

        async def handle(request: Request, saga_id: str = "", *, name: str = route.name) -> Response:
            runtime = get_runtime(request)
            if authorize is not None and name in ("recover", "park", "reset"):
                denied = await authorize_async(authorize, request, OperatorAction(name, saga_id))
                if denied is not None:
                    return _render(denied)
            body = await _read_body(request, runtime.config.max_body_bytes) if name == "park" else b""
            return _render(await operator_answer(runtime, name, saga_id=saga_id, query=_query(request), body=body))

        params = ["saga_id"] if "{saga_id}" in route.path else []
        router.add_api_route(
            prefix + route.path, _endpoint(handle, params, _QUERIES.get(route.name, ())),
            methods=[route.method], summary=f"{route.name.capitalize()} (sagas)", response_model=None,
            name=f"saga_{route.name}",
        )
    if health is not None:

        async def health_route(request: Request) -> Response:
            return _render(await health_answer(get_runtime(request)))

        router.add_api_route(health, health_route, methods=["GET"], summary="Health", response_model=None)
    return router


_OBJECT = {"type": "object", "description": "the event, a JSON object"}


def webhook_routes(
    *,
    prefix: str = "/webhooks",
    tags: typing.Sequence[str] = ("webhooks",),
    dependencies: typing.Sequence[_fastapi_params.Depends] | None = None,
    **options: typing_extensions.Unpack[WebhookOptions],
) -> fastapi.APIRouter:
    """An `APIRouter` starting sagas from signed events (see `cqrs.triggers` and docs/triggers.md).

    ``POST {prefix}/{source}``: ``verifier``'s signature (401), the source
    (404), size (413; at most the app's ``max_body_bytes``, which the
    middleware enforces), a JSON object (400), the idempotency field and the
    context (422); then every saga with a ``@trigger(source=...)`` is
    recorded and ``202`` answered, and the sagas run in the background.
    ``GET {prefix}/{source}/status/{correlation_id}``: what that event
    started. ``options`` (`WebhookEndpoint`'s): a ``verifier`` is required;
    a source that cannot sign is accepted unsigned only when listed in
    ``insecure_unsigned_sources``; ``sagas`` and ``max_body_bytes`` default
    to the app's.
    """
    endpoint = WebhookEndpoint(**options)
    router = fastapi.APIRouter(tags=list(tags), dependencies=list(dependencies or ()))
    prefix = prefix.rstrip("/")

    async def deliver(request: Request, source: str) -> Response:
        runtime = get_runtime(request)
        try:
            body = await _read_body(request, endpoint.limit(runtime.config))
        except Problem as problem:
            return _render(problem_answer(problem))
        return _render(
            await deliver_answer(runtime, endpoint, source, body, request.headers, correlation.get_correlation_id())
        )

    async def status(request: Request, source: str, correlation_id: str) -> Response:
        return _render(await event_status_answer(get_runtime(request), endpoint, source, correlation_id))

    router.add_api_route(
        prefix + "/{source}", _endpoint(deliver, ["source"]), methods=["POST"],
        status_code=202, summary="Deliver an event", response_model=None,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _OBJECT}}}},
    )
    router.add_api_route(
        prefix + "/{source}/status/{correlation_id:path}", _endpoint(status, ["source", "correlation_id"]),
        methods=["GET"], summary="What an event started", response_model=None,
    )
    return router


# -- correlation ids and body limits ------------------------------------------------------------------


class SagaContextMiddleware:
    """Pure ASGI middleware: a correlation id for each request, and the app's body limit.

    Reads the config's correlation header (``header_name`` overrides it;
    sanitised by `cqrs.correlation.accept_correlation_id`, a fresh id when it
    is absent or unfit), makes it the current correlation id for the request
    (stored on sagas started in it, seen by step code, added to log records
    by `cqrs.correlation.CorrelationIdFilter`), puts it on
    ``request.state.correlation_id`` and echoes it on the response.

    Request bodies over ``max_body_bytes`` (default: the config's) are
    answered 413 (problem details) before the app reads them: a declared
    ``Content-Length`` is checked; a body without one is read up to the limit
    first. Streaming responses pass through unbuffered.
    """

    def __init__(self, app: ASGIApp, header_name: str | None = None, max_body_bytes: int | None = None) -> None:
        self.app = app
        self.header_name = header_name
        self.max_body_bytes = max_body_bytes

    def _settings(self, scope: Scope) -> tuple[str, int | None]:
        runtime = getattr(getattr(scope.get("app"), "state", None), _STATE_ATTR, None)
        config = runtime.config if isinstance(runtime, SagaRuntime) else None
        header = self.header_name or (config.correlation_header if config else SagaConfig.correlation_header)
        limit = self.max_body_bytes if self.max_body_bytes is not None else (config.max_body_bytes if config else None)
        return header, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header, limit = self._settings(scope)
        raw_name = header.lower().encode("latin-1")
        incoming = None
        declared = None
        for name, value in scope.get("headers", ()):
            if name.lower() == raw_name:
                incoming = value.decode("latin-1")
            elif name.lower() == b"content-length":
                declared = value.decode("latin-1")
        correlation_id = correlation.accept_correlation_id(incoming)
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        echoed = (raw_name, correlation_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != raw_name]
                headers.append(echoed)
                message = {**message, "headers": headers}
            await send(message)

        token = correlation.set_correlation_id(correlation_id)
        try:
            if scope["type"] == "http" and limit is not None:
                try:
                    check_content_length(declared, max_bytes=limit)
                    if declared is None:
                        receive = await _buffered(receive, limit)
                except Problem as problem:
                    await _render(problem_answer(problem))(scope, receive, send_with_id)
                    return
            await self.app(scope, receive, send_with_id)
        finally:
            correlation.reset_correlation_id(token)


async def _buffered(receive: Receive, limit: int) -> Receive:
    """Read a body that declared no length, up to ``limit`` bytes (413 past it), and replay it."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if size > limit:
            raise Problem(413, f"The request body is over the limit of {limit} bytes")
        if not message.get("more_body", False):
            break

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay
