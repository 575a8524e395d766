"""Flask integration: an extension running sagas from ordinary synchronous views.

A thin adapter over the framework-agnostic pieces (`cqrs.config.SagaConfig`,
`cqrs.correlation`, `cqrs.integrations._loop`, `._requests`, `._status`)::

    from flask import Flask
    from cqrs.integrations.flask import SagaExtension, read_saga_context

    app = Flask(__name__)
    app.config["CQRS_SAGA_STORAGE_URL"] = "sqlite+aiosqlite:///orders.db"
    sagas = SagaExtension(app, sagas=[OrderSaga], container=container)
    sagas.register_routes(prefix="/sagas")          # /health, /sagas/<id>, /sagas/<id>/diagram

    @app.post("/orders")
    def create_order():
        context = read_saga_context(OrderContext)   # 400 / 413 JSON on bad input
        result = sagas.run_sync(sagas.create_saga(OrderSaga), context)
        return {"saga_id": result["saga_id"], "status": result.status}

Sagas run on one long-lived event loop per process (a daemon thread shared
by every app), never on a loop made for a request: a request thread submits
the run and waits. The run belongs to the loop, so a request that stops
waiting (``timeout=``) leaves its saga running to its end.

Needs ``pip install 'cqrs-saga[flask]'``.
"""

from __future__ import annotations

try:
    import flask
except ImportError as _error:  # pragma: no cover - exercised in a test with flask hidden
    raise ImportError(
        "cqrs.integrations.flask needs Flask, which is not installed: pip install 'cqrs-saga[flask]'"
    ) from _error

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import typing
import uuid
import weakref

import pydantic

from cqrs import correlation
from cqrs.config import SagaConfig
from cqrs.integrations._background import resume_quietly
from cqrs.integrations._loop import LoopThread, shared_loop_thread
from cqrs.integrations._requests import (
    BadRequest,
    build_context,
    check_content_length,
    parse_json_object,
    parse_saga_id,
)
from cqrs.integrations._status import saga_diagram, saga_diagram_document, saga_status, wants_json_diagram
from cqrs.integrations._webhooks import WebhookEndpoint
from cqrs.integrations.webhooks import SignatureVerifier, TriggerDispatcher
from cqrs.saga import _serialization
from cqrs.saga.exceptions import (
    SagaAlreadyRunningError,
    SagaDefinitionError,
    SagaIdConflictError,
    SagaNotRunnableError,
)
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from cqrs.triggers import AcceptedEvent

if typing.TYPE_CHECKING:
    from cqrs.saga.recovery import RecoveryWorker

__all__ = [
    "BadRequest",
    "SagaExtension",
    "SagaHandle",
    "SagaResult",
    "SagaRunTimeout",
    "read_saga_context",
    "register_webhook_blueprint",
]

logger = logging.getLogger("cqrs.integrations.flask")

C = typing.TypeVar("C")
T = typing.TypeVar("T")

EXTENSION_KEY = "cqrs_saga"
#: How long status, diagram and health queries may wait for the storage.
QUERY_TIMEOUT = 30.0


# -- what run_sync returns ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SagaResult:
    """How a saga run ended; read fields as attributes or by key (``result["saga_id"]``).

    ``status`` is ``completed``, or ``failed`` / ``compensation_failed`` with
    ``error`` the failing step's exception; ``results`` are the completed
    steps' `SagaStepResult`s and ``steps`` their responses as JSON, by step name.
    """

    saga_id: uuid.UUID
    status: SagaStatus
    results: list[SagaStepResult[typing.Any, typing.Any]]
    error: BaseException | None = None
    correlation_id: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == SagaStatus.COMPLETED

    @property
    def steps(self) -> dict[str, typing.Any]:
        return {
            r.step_type.name: _serialization.dump_response(r.response)
            if isinstance(r.response, pydantic.BaseModel)
            else None
            for r in self.results
        }

    def __getitem__(self, key: str) -> typing.Any:
        if key not in _RESULT_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def to_dict(self) -> dict[str, typing.Any]:
        """JSON-ready: ``saga_id``, ``status``, ``correlation_id``, ``completed_steps``, ``error``.

        ``completed_steps`` lists ``{"step", "response"}`` in run order, as the status route does.
        """
        return {
            "saga_id": str(self.saga_id),
            "status": self.status.value,
            "correlation_id": self.correlation_id,
            "completed_steps": [{"step": name, "response": response} for name, response in self.steps.items()],
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
        }


_RESULT_KEYS = frozenset({f.name for f in dataclasses.fields(SagaResult)} | {"succeeded", "steps"})


class SagaRunTimeout(TimeoutError):
    """`SagaExtension.run_sync` stopped waiting; the saga ``saga_id`` runs on to its end.

    The extension answers it with a 202 and the saga id unless the app handles it.
    """

    def __init__(self, saga_id: uuid.UUID, timeout: float) -> None:
        self.saga_id = saga_id
        self.timeout = timeout
        super().__init__(f"Saga {saga_id} still running after {timeout:g}s; it finishes in the background")


@dataclasses.dataclass(frozen=True)
class SagaHandle(typing.Generic[C]):
    """A saga class ready to run through its extension (what `SagaExtension.create_saga` returns)."""

    extension: SagaExtension
    saga_type: type[Saga[C]]

    @property
    def name(self) -> str:
        return self.saga_type.name

    def run(self, context: C | typing.Mapping[str, typing.Any], **options: typing.Any) -> SagaResult:
        """The same as ``extension.run_sync(self, context, **options)``."""
        return self.extension.run_sync(self, context, **options)


# -- per-app runtime ------------------------------------------------------------------------


class _Runtime:
    """One app's config, mediator and running sagas, all on the shared loop."""

    def __init__(self, config: SagaConfig, loop: LoopThread, shutdown_grace: float) -> None:
        self.config = config
        self.loop = loop
        self.shutdown_grace = shutdown_grace
        self.mediator: SagaMediator | None = None
        self.tasks: set[asyncio.Task[typing.Any]] = set()  # touched on the loop thread only
        self.recovery: RecoveryWorker | None = None
        self.recovery_task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()

    def ready(self) -> SagaMediator:
        mediator = self.mediator
        if mediator is None:
            with self._lock:
                if self.mediator is None:
                    self.loop.run(self._open())
                mediator = self.mediator
        assert mediator is not None
        return mediator

    async def _open(self) -> None:
        await self.config.initialize()
        self.mediator = self.config.mediator()
        if self.config.recovery:
            self.recovery = self.config.recovery_worker()
            self.recovery_task = asyncio.ensure_future(self.recovery.run())

    def submit_ready(self, coro: typing.Coroutine[typing.Any, typing.Any, T]) -> concurrent.futures.Future[T]:
        try:
            self.ready()
        except BaseException:
            coro.close()
            raise
        return self.loop.submit(self._tracked(coro))

    async def _tracked(self, coro: typing.Coroutine[typing.Any, typing.Any, T]) -> T:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            return await coro
        finally:
            self.tasks.discard(task)

    def query(self, coro: typing.Coroutine[typing.Any, typing.Any, T]) -> T:
        future = self.submit_ready(coro)
        try:
            return future.result(QUERY_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BadRequest(503, f"The saga storage did not answer within {QUERY_TIMEOUT:g}s") from None

    def close(self) -> None:
        with self._lock:
            if self.mediator is not None:
                self.loop.run(self._close())
                self.mediator = None

    async def _close(self) -> None:
        try:
            if self.tasks:
                _, pending = await asyncio.wait(set(self.tasks), timeout=self.shutdown_grace)
                for task in pending:  # cancelled runs write nothing more and stay recoverable
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            if self.recovery is not None and self.recovery_task is not None:
                self.recovery.stop()
                try:
                    await self.recovery_task
                except Exception:
                    logger.exception("The saga recovery worker stopped with an error")
                self.recovery = self.recovery_task = None
        finally:
            await self.config.close()


# -- the extension ------------------------------------------------------------------------


class SagaExtension:
    """Runs sagas for Flask apps: ``SagaExtension(app, ...)`` or ``ext.init_app(app, ...)``.

    Configuration is ``app.config`` keys with ``prefix`` (``CQRS_SAGA_STORAGE_URL``,
    ``CQRS_SAGA_CORRELATION_HEADER``, ``CQRS_SAGA_COMPENSATION_RETRY_COUNT``,
    ``CQRS_SAGA_LEASE_SECONDS``, ``CQRS_SAGA_MAX_BODY_BYTES``, ``CQRS_SAGA_RECOVERY``,
    ... : the fields of `SagaConfig`), overridden by keyword ``settings``; an
    unknown key raises `ValueError`. ``sagas`` and ``container`` (a
    ``di.Container`` or `cqrs.Container`) are given here; ``config`` replaces
    all of it with a ready `SagaConfig`. Arguments to `init_app` add to (and
    override) the constructor's.

    The extension is stored in ``app.extensions["cqrs_saga"]``. Per request it
    reads or creates the correlation id (``flask.g.correlation_id``) and echoes
    it on the response; it answers `BadRequest` errors and `SagaRunTimeout`
    with JSON. The storage is opened on first use (or by `initialize`) on the
    process's shared event loop, and closed by `close` or at interpreter exit,
    after waiting up to ``shutdown_grace`` seconds for running sagas.
    """

    def __init__(
        self,
        app: flask.Flask | None = None,
        *,
        sagas: typing.Sequence[type[Saga[typing.Any]]] = (),
        container: typing.Any = None,
        config: SagaConfig | None = None,
        prefix: str = "CQRS_SAGA_",
        shutdown_grace: float = 10.0,
        loop: LoopThread | None = None,
        **settings: typing.Any,
    ) -> None:
        self._options: dict[str, typing.Any] = {
            "sagas": sagas, "container": container, "config": config, "prefix": prefix,
            "shutdown_grace": shutdown_grace, "loop": loop, **settings,
        }
        self._runtimes: dict[flask.Flask, _Runtime] = {}
        self._exit_hook = False
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask, **options: typing.Any) -> None:
        """Configure ``app``; ``options`` are those of the constructor, for this app."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"A SagaExtension is already registered on {app.name!r}")
        opts = {**self._options, **options}
        config: SagaConfig | None = opts.pop("config")
        prefix: str = opts.pop("prefix")
        shutdown_grace: float = opts.pop("shutdown_grace")
        loop: LoopThread = opts.pop("loop") or shared_loop_thread()
        if config is None:
            keys = {k[len(prefix):]: v for k, v in app.config.items() if k.startswith(prefix)}
            try:
                config = SagaConfig.from_mapping(keys, **opts)
            except ValueError as error:
                raise ValueError(f"app.config keys {prefix}*: {error}") from None
        runtime = _Runtime(config, loop, shutdown_grace)
        self._runtimes[app] = runtime
        app.extensions[EXTENSION_KEY] = self
        header = config.correlation_header

        def take_correlation_id() -> None:
            value = correlation.accept_correlation_id(flask.request.headers.get(header))
            flask.g.correlation_id = value
            flask.g._saga_correlation_token = correlation.set_correlation_id(value)

        def echo_correlation_id(response: flask.Response) -> flask.Response:
            value = flask.g.get("correlation_id")
            if value is not None:
                response.headers[header] = value
            return response

        def forget_correlation_id(_: BaseException | None) -> None:
            token = flask.g.pop("_saga_correlation_token", None)
            if token is not None:
                with contextlib.suppress(ValueError):
                    correlation.reset_correlation_id(token)

        app.before_request(take_correlation_id)
        app.after_request(echo_correlation_id)
        app.teardown_request(forget_correlation_id)
        app.register_error_handler(BadRequest, _bad_request)
        app.register_error_handler(SagaRunTimeout, _still_running)
        if not self._exit_hook:  # after shared_loop_thread(): atexit runs this first, then stops the loop
            atexit.register(_close_at_exit, weakref.ref(self))
            self._exit_hook = True

    # -- lifecycle --------------------------------------------------------------------------

    def _runtime(self, app: flask.Flask | None = None) -> _Runtime:
        if app is None and flask.has_app_context():
            app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        if app is None:
            if len(self._runtimes) != 1:
                raise RuntimeError("No Flask app context: pass app=, or call this inside a request or app context")
            return next(iter(self._runtimes.values()))
        try:
            return self._runtimes[app]
        except KeyError:
            raise RuntimeError(f"SagaExtension.init_app() was not called for {app.name!r}") from None

    def config(self, app: flask.Flask | None = None) -> SagaConfig:
        """The `SagaConfig` of ``app`` (default: the current app)."""
        return self._runtime(app).config

    def initialize(self, app: flask.Flask | None = None) -> None:
        """Open the storage now instead of on first use (to fail fast at startup)."""
        self._runtime(app).ready()

    def mediator(self, app: flask.Flask | None = None) -> SagaMediator:
        """The app's `SagaMediator` (opening the storage if needed).

        Its coroutines must run on the shared loop: pass them to `run_coroutine`.
        """
        return self._runtime(app).ready()

    def run_coroutine(
        self, coro: typing.Coroutine[typing.Any, typing.Any, T], *, timeout: float | None = None
    ) -> T:
        """Run ``coro`` on the shared loop and wait for it (storage queries, ``mediator().start``...).

        Like saga runs, it is not cancelled when the wait times out
        (`concurrent.futures.TimeoutError`), and `close` waits for it.
        """
        return self._runtime().submit_ready(coro).result(timeout)

    def close(self, app: flask.Flask | None = None) -> None:
        """Wait up to ``shutdown_grace`` s for running sagas (cancelling the rest), then close the storage.

        Without ``app``, for every app of this extension. Runs again at
        interpreter exit; using the extension later opens the storage again.
        """
        runtimes = [self._runtime(app)] if app is not None else list(self._runtimes.values())
        for runtime in runtimes:
            runtime.close()

    # -- running sagas --------------------------------------------------------------------------

    def create_saga(self, saga_type: type[Saga[C]], app: flask.Flask | None = None) -> SagaHandle[C]:
        """A handle to run ``saga_type``; registers it with the app's sagas if it is not yet.

        Raises `SagaDefinitionError` if another saga is bound to its context type or name.
        """
        if not (isinstance(saga_type, type) and issubclass(saga_type, Saga)):
            raise SagaDefinitionError(f"create_saga expects a Saga subclass, got {saga_type!r}")
        saga_map = self._runtime(app).config.saga_map
        context_type = saga_type.context_type
        if context_type is None:
            raise SagaDefinitionError(f"{saga_type.__qualname__} declares no context type")
        if context_type in saga_map:
            bound = saga_map.saga_for(context_type)
            if bound is not saga_type:
                raise SagaDefinitionError(
                    f"{context_type.__qualname__} is bound to {bound.__qualname__}, not {saga_type.__qualname__}"
                )
        else:
            saga_map.register(saga_type)
        return SagaHandle(self, saga_type)

    def run_sync(
        self,
        saga: SagaHandle[C] | type[Saga[C]],
        context: C | typing.Mapping[str, typing.Any],
        *,
        saga_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> SagaResult:
        """Run the saga for ``context`` to its end, blocking this thread, and report how it ended.

        ``context`` is the saga's context, or a mapping validated into it (a
        `BadRequest` 400 naming each bad field). The run happens on the shared
        loop thread; this thread only waits. A step failure does not raise:
        the result has the status and error. ``correlation_id`` defaults to the
        request's. ``saga_id`` (default: a new one) of a stored saga takes it
        up, or answers for it if it is final; one running right now (or
        parked, or of another saga) is a `BadRequest` 409. After ``timeout``
        seconds `SagaRunTimeout` is raised and the saga runs on to its end.
        """
        handle = saga if isinstance(saga, SagaHandle) else self.create_saga(saga)
        runtime = self._runtime()
        value = _as_context(handle.saga_type, context)
        mediator = runtime.ready()
        saga_id = saga_id or uuid.uuid4()
        correlation_id = correlation_id or correlation.get_correlation_id()
        future = runtime.submit_ready(mediator.run(value, saga_id, correlation_id=correlation_id))
        try:
            outcome = future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise SagaRunTimeout(saga_id, timeout or 0.0) from None
        except (SagaAlreadyRunningError, SagaIdConflictError, SagaNotRunnableError) as error:
            raise BadRequest(409, str(error)) from None
        return SagaResult(outcome.saga_id, outcome.status, outcome.results, outcome.error, correlation_id)

    # -- status and routes --------------------------------------------------------------------------

    def saga_status(self, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
        """The stored saga as a JSON-ready dict (see `blueprint`); `BadRequest` 404 / 422."""
        runtime = self._runtime()
        return runtime.query(_status(runtime.config, parse_saga_id(saga_id)))

    def saga_diagram(self, saga_id: uuid.UUID | str) -> str:
        """Mermaid source of the saga's run, its steps marked; `BadRequest` 404 / 422."""
        runtime = self._runtime()
        return runtime.query(_diagram(runtime.config, parse_saga_id(saga_id)))

    def health(self) -> tuple[dict[str, typing.Any], int]:
        """``({"status": "ok"}, 200)`` when the storage answers a query, else 503 with the error."""
        runtime = self._runtime()
        try:
            runtime.query(_ping(runtime.config))
        except Exception as error:
            logger.warning("health check: saga storage unavailable: %s", error)
            return {"status": "unavailable", "error": f"{type(error).__name__}: {error}"}, 503
        return {"status": "ok"}, 200

    def blueprint(
        self, *, prefix: str = "/sagas", health: str | None = "/health", name: str = "cqrs_saga"
    ) -> flask.Blueprint:
        """A blueprint with ``GET {health}``, ``GET {prefix}/<saga_id>`` and ``GET {prefix}/<saga_id>/diagram``.

        Status is JSON: ``status``, ``completed_steps`` (with responses),
        ``compensated_steps``, ``failed_step``, ``error``, ``correlation_id``,
        ``context``. The diagram is Mermaid text (``?format=json`` for
        ``{"saga_id", "status", "diagram"}``). Unknown ids are a 404, malformed
        ones a 422, both JSON ``{"error": ...}``. ``health=None`` leaves health out.
        """
        bp = flask.Blueprint(name, __name__)

        def status_view(saga_id: str) -> flask.Response:
            return flask.jsonify(self.saga_status(saga_id))

        def diagram_view(saga_id: str) -> flask.Response | dict[str, typing.Any]:
            if not wants_json_diagram(flask.request.args.get("format", "text")):
                return flask.Response(self.saga_diagram(saga_id), mimetype="text/plain")
            runtime = self._runtime()
            return runtime.query(_diagram_document(runtime.config, parse_saga_id(saga_id)))

        def health_view() -> tuple[dict[str, typing.Any], int]:
            return self.health()

        prefix = prefix.rstrip("/")
        bp.add_url_rule(f"{prefix}/<saga_id>", "saga_status", status_view, methods=["GET"])
        bp.add_url_rule(f"{prefix}/<saga_id>/diagram", "saga_diagram", diagram_view, methods=["GET"])
        if health is not None:
            bp.add_url_rule(health, "health", health_view, methods=["GET"])
        return bp

    def register_routes(self, app: flask.Flask | None = None, **options: typing.Any) -> flask.Blueprint:
        """Register `blueprint` (with ``options``) on ``app`` (default: the only app of this extension)."""
        if app is None:
            if len(self._runtimes) != 1:
                raise RuntimeError("register_routes() needs app= when the extension serves several apps")
            app = next(iter(self._runtimes))
        bp = self.blueprint(**options)
        app.register_blueprint(bp)
        return bp

    # -- webhooks --------------------------------------------------------------------------

    def webhook_blueprint(
        self,
        url_prefix: str | None = "/webhooks",
        *,
        sagas: typing.Sequence[type[Saga[typing.Any]]] | None = None,
        verifier: SignatureVerifier | None = None,
        max_body_bytes: int | None = None,
        name: str = "cqrs_webhooks",
    ) -> flask.Blueprint:
        """A blueprint starting sagas from events (see `cqrs.triggers`).

        ``POST {url_prefix}/<source>``: the raw body is checked (``verifier``'s
        HMAC signature, 401; the source, 404; size, 413; a JSON object, 400; the
        idempotency field and the trigger's context, 422) and every saga with a
        ``@trigger(source=...)`` is recorded (once per idempotency key) before
        the answer, ``202`` with ``{"status", "source", "correlation_id",
        "sagas"}``; the sagas then run on the shared loop (`wait_for_sagas`
        and `close` wait for them).

        ``GET {url_prefix}/<source>/status/<correlation_id>``: the stored state
        of every saga that event started (404 if none). Refusals are JSON
        ``{"error": ...}``. ``sagas`` and ``max_body_bytes`` default to the app's.
        """
        endpoint = WebhookEndpoint(sagas=sagas, verifier=verifier, max_body_bytes=max_body_bytes)
        bp = flask.Blueprint(name, __name__, url_prefix=url_prefix.rstrip("/") if url_prefix else None)

        def deliver(source: str) -> tuple[flask.Response, int]:
            runtime = self._runtime()
            runtime.ready()
            dispatcher = endpoint.dispatcher(runtime.config)
            limit = dispatcher.max_body_bytes
            body = _read_body(limit)
            headers = dict(flask.request.headers.items())
            accepted = runtime.query(_deliver(runtime, dispatcher, source, body, headers))
            return flask.jsonify(accepted.as_json()), 202

        def status(source: str, correlation_id: str) -> flask.Response:
            runtime = self._runtime()
            runtime.ready()
            dispatcher = endpoint.dispatcher(runtime.config)
            return flask.jsonify(runtime.query(_event_status(runtime, dispatcher, source, correlation_id)))

        bp.add_url_rule("/<source>", "deliver_event", deliver, methods=["POST"])
        bp.add_url_rule("/<source>/status/<path:correlation_id>", "event_status", status, methods=["GET"])
        return bp

    def register_webhook_blueprint(
        self, url_prefix: str | None = "/webhooks", *, app: flask.Flask | None = None, **options: typing.Any
    ) -> flask.Blueprint:
        """Register `webhook_blueprint` (``options`` are its own) on ``app`` (default: the only app)."""
        if app is None:
            if len(self._runtimes) != 1:
                raise RuntimeError("register_webhook_blueprint() needs app= when the extension serves several apps")
            app = next(iter(self._runtimes))
        bp = self.webhook_blueprint(url_prefix, **options)
        app.register_blueprint(bp)
        return bp

    def wait_for_sagas(self, timeout: float | None = None, app: flask.Flask | None = None) -> bool:
        """Block until the app's background runs (webhook sagas, in-flight queries) end.

        False if some still run after ``timeout`` seconds (they go on).
        """
        runtime = self._runtime(app)
        if runtime.mediator is None:
            return True
        return runtime.loop.run(_wait_for_tasks(runtime, timeout))


# -- request bodies ------------------------------------------------------------------------


def read_saga_context(context_type: type[C], *, max_bytes: int | None = None) -> C:
    """Build a ``context_type`` from the current request's JSON body, or raise a `BadRequest`.

    413 when the body is larger than ``max_bytes`` (default: the app's
    ``CQRS_SAGA_MAX_BODY_BYTES``), judged by ``Content-Length`` and by the bytes
    read; 400 for a body that is not a JSON object or whose fields do not fit
    ``context_type`` (the message names each field). The extension answers
    these with JSON ``{"error": ..., "details": [...]}``; nothing is stored.
    """
    if max_bytes is None:
        extension = flask.current_app.extensions.get(EXTENSION_KEY)
        max_bytes = (
            extension.config().max_body_bytes if isinstance(extension, SagaExtension) else SagaConfig.max_body_bytes
        )
    return typing.cast(C, build_context(context_type, parse_json_object(_read_body(max_bytes), max_bytes=max_bytes)))


def _read_body(limit: int) -> bytes:
    """The request body, refused with 413 once it is known to pass ``limit`` bytes (header or bytes read)."""
    check_content_length(flask.request.headers.get("Content-Length"), max_bytes=limit)
    body = bytearray()
    stream = flask.request.stream
    while chunk := stream.read(min(65536, limit + 1 - len(body))):
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"Request body is larger than the limit of {limit} bytes")
    return bytes(body)


# -- helpers ------------------------------------------------------------------------


def _as_context(saga_type: type[Saga[C]], context: C | typing.Mapping[str, typing.Any]) -> C:
    context_type = saga_type.context_type
    if context_type is None or isinstance(context, context_type):
        return typing.cast(C, context)
    if isinstance(context, typing.Mapping):
        return typing.cast(C, build_context(context_type, context))
    raise TypeError(f"{saga_type.__qualname__} runs on {context_type.__qualname__}, got {type(context).__name__}")


async def _status(config: SagaConfig, saga_id: uuid.UUID) -> dict[str, typing.Any]:
    return await saga_status(config.require_storage(), saga_id)


async def _diagram(config: SagaConfig, saga_id: uuid.UUID) -> str:
    return await saga_diagram(config.require_storage(), config.saga_map, saga_id)


async def _diagram_document(config: SagaConfig, saga_id: uuid.UUID) -> dict[str, typing.Any]:
    return await saga_diagram_document(config.require_storage(), config.saga_map, saga_id)


async def _ping(config: SagaConfig) -> None:
    await config.require_storage().list_sagas(limit=1)


def _bad_request(error: BadRequest) -> tuple[flask.Response, int]:
    return flask.jsonify(error.body()), error.status


def _still_running(error: SagaRunTimeout) -> tuple[flask.Response, int]:
    return flask.jsonify({"saga_id": str(error.saga_id), "status": "running", "error": str(error)}), 202


def _close_at_exit(ref: weakref.ref[SagaExtension]) -> None:
    extension = ref()
    if extension is not None:
        try:
            extension.close()
        except Exception:
            logger.exception("Closing the saga extension at exit failed")


# -- webhooks ------------------------------------------------------------------------


def register_webhook_blueprint(
    app: flask.Flask, url_prefix: str | None = "/webhooks", **options: typing.Any
) -> flask.Blueprint:
    """`SagaExtension.register_webhook_blueprint` for ``app``'s extension (``SagaExtension(app)`` first)."""
    extension = app.extensions.get(EXTENSION_KEY)
    if not isinstance(extension, SagaExtension):
        raise RuntimeError(f"No SagaExtension on {app.name!r}: create SagaExtension(app, sagas=[...]) first")
    return extension.register_webhook_blueprint(url_prefix, app=app, **options)


async def _deliver(
    runtime: _Runtime,
    dispatcher: TriggerDispatcher,
    source: str,
    body: bytes,
    headers: dict[str, str],
) -> AcceptedEvent:
    mediator = runtime.mediator
    assert mediator is not None
    # The request's correlation id comes along in the context (see `LoopThread.submit`).
    accepted = await dispatcher.accept(mediator, source, body, headers)
    for saga in accepted.started:  # tracked: close() and wait_for_sagas() wait for them
        task = asyncio.ensure_future(resume_quietly(mediator, saga.saga_id))
        runtime.tasks.add(task)
        task.add_done_callback(runtime.tasks.discard)
    return accepted


async def _event_status(
    runtime: _Runtime, dispatcher: TriggerDispatcher, source: str, correlation_id: str
) -> dict[str, typing.Any]:
    return await dispatcher.status(runtime.config.require_storage(), source, correlation_id)


async def _wait_for_tasks(runtime: _Runtime, timeout: float | None) -> bool:
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    me = asyncio.current_task()
    while True:
        pending = {task for task in runtime.tasks if task is not me and not task.done()}
        if not pending:
            return True
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            return False
        await asyncio.wait(pending, timeout=left)
