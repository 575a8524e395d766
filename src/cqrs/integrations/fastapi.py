"""FastAPI (and Starlette) integration: lifespan, dependencies, middleware, streams, routes.

A thin adapter over the framework-agnostic pieces (`cqrs.config.SagaConfig`,
`cqrs.correlation`, `cqrs.integrations._background`, `._requests`,
`._status`)::

    from fastapi import Depends, FastAPI, Request
    from cqrs.config import SagaConfig
    from cqrs.integrations import fastapi as saga_api

    config = SagaConfig.from_env(sagas=[OrderSaga], container=container)
    app = FastAPI(lifespan=saga_api.create_lifespan(config, recovery=True))
    app.add_middleware(saga_api.SagaContextMiddleware)
    app.include_router(saga_api.saga_router(prefix="/sagas"))

    @app.post("/orders", status_code=202)
    async def create_order(
        request: Request, context: OrderContext = Depends(saga_api.saga_context(OrderContext))
    ) -> dict[str, str]:
        saga_id = await saga_api.run_saga_background(request, context)
        return {"saga_id": str(saga_id)}

    @app.post("/orders/stream")
    async def stream_order(
        request: Request, context: OrderContext = Depends(saga_api.saga_context(OrderContext))
    ) -> StreamingResponse:
        return await saga_api.saga_event_stream(request, context)

Needs ``pip install 'cqrs-saga[fastapi]'``.
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

import asyncio
import contextlib
import dataclasses
import json
import logging
import typing
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cqrs import correlation
from cqrs.config import SagaConfig
from cqrs.config import get_config as _global_config
from cqrs.integrations._background import BackgroundRunner, SagaEventFeed
from cqrs.integrations._requests import (
    BadRequest,
    build_context,
    check_content_length,
    parse_json_object,
    parse_saga_id,
)
from cqrs.integrations._status import saga_diagram, saga_diagram_document, saga_status, wants_json_diagram
from cqrs.integrations._webhooks import WebhookEndpoint
from cqrs.integrations.webhooks import SignatureVerifier
from cqrs.saga.exceptions import SagaAlreadyRunningError, SagaIdConflictError
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.recovery import RecoveryWorker
from cqrs.saga.saga import Saga
from cqrs.saga.storage.protocol import SagaStorage

__all__ = [
    "SagaContextMiddleware",
    "SagaRuntime",
    "create_lifespan",
    "get_config",
    "get_mediator",
    "get_runner",
    "get_storage",
    "read_saga_context",
    "run_saga_background",
    "saga_context",
    "saga_event_stream",
    "saga_lifespan",
    "saga_router",
    "webhook_router",
]

logger = logging.getLogger("cqrs.integrations.fastapi")

C = typing.TypeVar("C")
AppT = typing.TypeVar("AppT")
Lifespan = typing.Callable[[AppT], typing.AsyncContextManager[typing.Any]]
RecoveryOption = bool | typing.Callable[[SagaConfig], RecoveryWorker] | None

_STATE_ATTR = "saga"


# -- lifespan --------------------------------------------------------------------


@dataclasses.dataclass
class SagaRuntime:
    """What the saga lifespan keeps on ``app.state.saga`` while the app runs."""

    config: SagaConfig
    mediator: SagaMediator
    runner: BackgroundRunner
    recovery: RecoveryWorker | None = None
    recovery_task: asyncio.Task[None] | None = None


@contextlib.asynccontextmanager
async def saga_lifespan(
    app: typing.Any,
    config: SagaConfig | None = None,
    *,
    recovery: RecoveryOption = None,
    shutdown_grace: float = 10.0,
) -> typing.AsyncIterator[SagaRuntime]:
    """Run sagas for the life of ``app``; use inside your own lifespan, or via `create_lifespan`.

    On enter: opens ``config``'s storage (``config`` defaults to the one given
    to `cqrs.config.configure`), stores a `SagaRuntime` on ``app.state.saga``
    and, if ``recovery`` asks for it, starts a `RecoveryWorker`. ``recovery``
    is True/False, a function building the worker from the config, or None
    to follow ``config.recovery``.

    On exit: stops the recovery worker (it lets its in-flight sagas finish),
    waits up to ``shutdown_grace`` seconds for background and streamed runs
    (runs still going are cancelled; they write nothing more and stay
    recoverable), then closes the storage.
    """
    config = config if config is not None else _global_config()
    await config.initialize()
    runner = BackgroundRunner()
    try:
        runtime = SagaRuntime(config=config, mediator=config.mediator(), runner=runner)
        wanted = config.recovery if recovery is None else recovery
        if wanted is True:
            runtime.recovery = config.recovery_worker()
        elif callable(wanted):
            runtime.recovery = wanted(config)
        if runtime.recovery is not None:
            runtime.recovery_task = asyncio.ensure_future(runtime.recovery.run())
        setattr(app.state, _STATE_ATTR, runtime)
        try:
            yield runtime
        finally:
            if runtime.recovery is not None:
                runtime.recovery.stop()
            await runner.wait(shutdown_grace)
            if runtime.recovery_task is not None:
                try:
                    await runtime.recovery_task
                except Exception:
                    logger.exception("The saga recovery worker stopped with an error")
            with contextlib.suppress(AttributeError):
                delattr(app.state, _STATE_ATTR)
    finally:
        await config.close()


def create_lifespan(
    config: SagaConfig | None = None,
    *,
    recovery: RecoveryOption = None,
    shutdown_grace: float = 10.0,
    lifespan: Lifespan[typing.Any] | None = None,
) -> Lifespan[typing.Any]:
    """A ``FastAPI(lifespan=...)`` that runs `saga_lifespan` around your own ``lifespan``.

    Your lifespan (if any) starts after the saga storage is open and ends
    before it is closed, so it may use `SagaRuntime` from ``app.state.saga``;
    whatever it yields is passed on as the lifespan state.
    """

    @contextlib.asynccontextmanager
    async def _lifespan(app: typing.Any) -> typing.AsyncIterator[typing.Any]:
        async with saga_lifespan(app, config, recovery=recovery, shutdown_grace=shutdown_grace):
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state

    return _lifespan


# -- dependencies --------------------------------------------------------------------


def _runtime(request: Request) -> SagaRuntime:
    runtime = getattr(request.app.state, _STATE_ATTR, None)
    if not isinstance(runtime, SagaRuntime):
        raise RuntimeError(
            "No saga lifespan is running for this app: create it with "
            "FastAPI(lifespan=cqrs.integrations.fastapi.create_lifespan(config))"
        )
    return runtime


def get_config(request: Request) -> SagaConfig:
    """Dependency: the app's `SagaConfig` (``Depends(get_config)``)."""
    return _runtime(request).config


def get_storage(request: Request) -> SagaStorage:
    """Dependency: the app's open saga storage."""
    return _runtime(request).config.require_storage()


def get_mediator(request: Request) -> SagaMediator:
    """Dependency: the app's `SagaMediator` (built once, at startup, from its config)."""
    return _runtime(request).mediator


def get_runner(request: Request) -> BackgroundRunner:
    """Dependency: the app's `BackgroundRunner` (shutdown waits for its runs)."""
    return _runtime(request).runner


# -- request bodies --------------------------------------------------------------------


def _http_error(error: BadRequest) -> fastapi.HTTPException:
    return fastapi.HTTPException(status_code=error.status, detail=error.message)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it is known to pass ``limit`` bytes (header or bytes read)."""
    check_content_length(request.headers.get("content-length"), max_bytes=limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"Request body is larger than the limit of {limit} bytes")
    return bytes(body)


async def read_saga_context(request: Request, context_type: type[C], *, max_bytes: int | None = None) -> C:
    """Build a ``context_type`` from the request's JSON body, or raise a 4xx `fastapi.HTTPException`.

    413 when the body is larger than ``max_bytes`` (default: the config's
    ``max_body_bytes``), judged by ``Content-Length`` and by the bytes read;
    400 for a body that is not a JSON object, or whose fields do not fit
    ``context_type`` (the message names each field). Nothing is stored.
    """
    limit = max_bytes if max_bytes is not None else get_config(request).max_body_bytes
    try:
        data = parse_json_object(await _read_body(request, limit), max_bytes=limit)
        return typing.cast(C, build_context(context_type, data))
    except BadRequest as error:
        raise _http_error(error) from None


def saga_context(
    context_type: type[C], *, max_bytes: int | None = None
) -> typing.Callable[[Request], typing.Awaitable[C]]:
    """Dependency factory: ``context: OrderContext = Depends(saga_context(OrderContext))``.

    See `read_saga_context` for the checks and the errors.
    """

    async def dependency(request: Request) -> C:
        return await read_saga_context(request, context_type, max_bytes=max_bytes)

    dependency.__name__ = f"saga_context_{context_type.__name__}"
    return dependency


# -- running sagas --------------------------------------------------------------------


async def _record(
    request: Request,
    context: typing.Any,
    saga_id: uuid.UUID | None,
    correlation_id: str | None,
    mediator: SagaMediator | None,
) -> tuple[SagaMediator, BackgroundRunner, uuid.UUID]:
    runtime = _runtime(request)
    mediator = mediator or runtime.mediator
    try:
        recorded = await mediator.start(context, saga_id, correlation_id=correlation_id)
    except (SagaAlreadyRunningError, SagaIdConflictError) as error:
        raise fastapi.HTTPException(status_code=409, detail=str(error)) from None
    return mediator, runtime.runner, recorded


async def run_saga_background(
    request: Request,
    context: typing.Any,
    *,
    saga_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    mediator: SagaMediator | None = None,
) -> uuid.UUID:
    """Record the saga for ``context``, run it in the background, and return its id at once.

    The saga is stored (with this process's lease) before this returns, so a
    202 answer always names a saga that exists; if the process dies before
    the run ends, a recovery worker finishes it. ``correlation_id`` defaults
    to the request's (see `SagaContextMiddleware`); ``mediator`` to the app's.
    A ``saga_id`` used by a saga that is running right now gives a 409.
    """
    mediator, runner, recorded = await _record(request, context, saga_id, correlation_id, mediator)
    runner.spawn(mediator, recorded)
    return recorded


def _sse(payload: dict[str, typing.Any]) -> str:
    return f"event: {payload['type']}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def saga_event_stream(
    request: Request,
    context: typing.Any,
    *,
    saga_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    mediator: SagaMediator | None = None,
    keepalive: float | None = 15.0,
) -> StreamingResponse:
    """Run the saga for ``context`` and answer with its progress as Server-Sent Events.

    The saga is recorded before the response starts, then runs as a
    background task: a client that disconnects stops receiving events, not the
    saga, which runs to its end (and shutdown waits for it like any
    background run). Each event has ``event: <type>`` and a JSON ``data:``
    line carrying the same ``type``:

    - ``start``: ``saga_id``, ``saga`` (its name), ``correlation_id``;
    - ``step_completed`` (``step``, ``response``), ``step_failed`` (``step``, ``error``);
    - ``compensating``, ``step_compensated`` / ``compensation_failed`` (``step``);
    - last, ``completed``, or ``failed`` with ``error`` and ``status``
      (``failed`` or ``compensation_failed``), or ``interrupted`` if the run
      stopped first (the saga stays recoverable).

    A comment line is sent every ``keepalive`` seconds without events.
    The response carries the saga id in ``X-Saga-ID``.
    """
    mediator, runner, recorded = await _record(request, context, saga_id, correlation_id, mediator)
    feed = SagaEventFeed(runner, mediator, recorded)
    start = {
        "type": "start",
        "saga_id": str(recorded),
        "saga": mediator.saga_map.saga_for(type(context)).name,
        "correlation_id": correlation_id or correlation.get_correlation_id(),
    }

    async def body() -> typing.AsyncIterator[str]:
        yield _sse(start)
        async for payload in feed.events(keepalive=keepalive):
            yield ": keepalive\n\n" if payload is None else _sse(payload)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Saga-ID": str(recorded)},
    )


# -- status routes --------------------------------------------------------------------


def saga_router(
    *,
    prefix: str = "/sagas",
    tags: typing.Sequence[str] = ("sagas",),
    dependencies: typing.Sequence[_fastapi_params.Depends] | None = None,
) -> fastapi.APIRouter:
    """An `APIRouter` with ``GET {prefix}/{saga_id}`` (status) and ``GET {prefix}/{saga_id}/diagram``.

    The status is JSON: ``status``, ``completed_steps`` (with responses),
    ``compensated_steps``, ``failed_step``, ``error``, ``correlation_id``,
    ``context``. The diagram is Mermaid text with the run's steps marked
    (``?format=json`` for ``{"saga_id", "status", "diagram"}``). An unknown id
    is a 404, a malformed one a 422, both JSON ``{"detail": ...}``. Add
    ``dependencies`` to protect the routes (authentication).
    """
    router = fastapi.APIRouter(prefix=prefix, tags=list(tags), dependencies=list(dependencies or ()))

    @router.get("/{saga_id}", summary="Status of a saga")
    async def get_saga_status(saga_id: str, request: Request) -> dict[str, typing.Any]:
        try:
            return await saga_status(get_storage(request), parse_saga_id(saga_id))
        except BadRequest as error:
            raise _http_error(error) from None

    @router.get(
        "/{saga_id}/diagram",
        summary="Mermaid diagram of a saga run",
        response_model=None,
        responses={200: {"content": {"text/plain": {}, "application/json": {}}}},
    )
    async def get_saga_diagram(
        saga_id: str, request: Request, format: str = "text"
    ) -> PlainTextResponse | dict[str, typing.Any]:
        try:
            as_json = wants_json_diagram(format)
            parsed = parse_saga_id(saga_id)
            config = get_config(request)
            storage = config.require_storage()
            if as_json:
                return await saga_diagram_document(storage, config.saga_map, parsed)
            return PlainTextResponse(await saga_diagram(storage, config.saga_map, parsed))
        except BadRequest as error:
            raise _http_error(error) from None

    return router


# -- correlation ids --------------------------------------------------------------------


class SagaContextMiddleware:
    """Pure ASGI middleware giving each request a correlation id.

    Reads ``header_name`` (sanitised by `cqrs.correlation.accept_correlation_id`;
    a fresh id when it is absent or unfit), makes it the current correlation
    id for the request (stored on sagas started in it, seen by step code via
    `cqrs.correlation.get_correlation_id`, added to log records by
    `cqrs.correlation.CorrelationIdFilter`), puts it on
    ``request.state.correlation_id`` and echoes it on the response. Streaming
    responses pass through unbuffered.
    """

    def __init__(self, app: ASGIApp, header_name: str = "X-Correlation-ID") -> None:
        self.app = app
        self.header_name = header_name
        self._raw_name = header_name.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name.lower() == self._raw_name:
                incoming = value.decode("latin-1")
                break
        correlation_id = correlation.accept_correlation_id(incoming)
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        echoed = (self._raw_name, correlation_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != self._raw_name]
                headers.append(echoed)
                message = {**message, "headers": headers}
            await send(message)

        token = correlation.set_correlation_id(correlation_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            correlation.reset_correlation_id(token)


# -- webhooks --------------------------------------------------------------------


def webhook_router(
    *,
    prefix: str = "/webhooks",
    sagas: typing.Sequence[type[Saga[typing.Any]]] | None = None,
    verifier: SignatureVerifier | None = None,
    max_body_bytes: int | None = None,
    tags: typing.Sequence[str] = ("webhooks",),
    dependencies: typing.Sequence[_fastapi_params.Depends] | None = None,
) -> fastapi.APIRouter:
    """An `APIRouter` starting sagas from events: see `cqrs.triggers`.

    ``POST {prefix}/{source}``: the raw body is checked (``verifier``'s HMAC
    signature, 401; the source, 404; size, 413; a JSON object, 400; the
    idempotency field and the trigger's context, 422) and every saga with a
    ``@trigger(source=...)`` is recorded (once per idempotency key) before the
    answer, ``202`` with ``{"status", "source", "correlation_id", "sagas"}``;
    the sagas then run in the app's `BackgroundRunner`.

    ``GET {prefix}/{source}/status/{correlation_id}``: the stored state of
    every saga that event started (404 if none). Refusals are JSON
    ``{"error": ...}``. ``sagas`` defaults to the config's; ``max_body_bytes``
    to the config's. Add ``dependencies`` to guard the routes further.
    """
    endpoint = WebhookEndpoint(sagas=sagas, verifier=verifier, max_body_bytes=max_body_bytes)
    router = fastapi.APIRouter(prefix=prefix, tags=list(tags), dependencies=list(dependencies or ()))

    @router.post("/{source}", status_code=202, summary="Deliver an event", response_model=None)
    async def deliver_event(source: str, request: Request) -> JSONResponse:
        runtime = _runtime(request)
        dispatcher = endpoint.dispatcher(runtime.config)
        limit = dispatcher.max_body_bytes
        try:
            body = await _read_body(request, limit)
            correlation_id = (
                getattr(request.state, "correlation_id", None)
                or request.headers.get(runtime.config.correlation_header)
                or correlation.get_correlation_id()
            )
            accepted = await dispatcher.accept(
                runtime.mediator, source, body, request.headers, correlation_id=correlation_id
            )
        except BadRequest as error:
            return JSONResponse(error.body(), status_code=error.status)
        for saga in accepted.started:
            runtime.runner.spawn(runtime.mediator, saga.saga_id)
        return JSONResponse(accepted.as_json(), status_code=202)

    @router.get("/{source}/status/{correlation_id:path}", summary="What an event started", response_model=None)
    async def event_status(source: str, correlation_id: str, request: Request) -> JSONResponse:
        runtime = _runtime(request)
        try:
            body = await endpoint.dispatcher(runtime.config).status(
                runtime.config.require_storage(), source, correlation_id
            )
        except BadRequest as error:
            return JSONResponse(error.body(), status_code=error.status)
        return JSONResponse(body)

    return router
