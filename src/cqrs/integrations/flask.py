"""Flask adapter of the saga runtime: an extension, the saga vocabulary for views, blueprints.

Everything runs in `cqrs.integrations._runtime.SagaRuntime` (one per app)
on the process's shared saga loop; this module maps it onto Flask's idioms::

    from flask import Flask
    from cqrs.integrations import flask as sagas

    app = Flask(__name__)
    app.config["CQRS_SAGA_STORAGE_URL"] = "sqlite+aiosqlite:///orders.db"
    sagas.SagaExtension(app, sagas=[OrderSaga], container=container)
    app.register_blueprint(sagas.operator_routes())     # /sagas, /sagas/<id>[/history|/diagram], /health

    @app.post("/orders")
    def create_order():
        order = sagas.read_saga_context(OrderContext)     # 400 / 413 / 422 problem on bad input
        result = sagas.run_saga(order, timeout=10)        # 202 with the status link if it runs longer
        return result.to_dict()

Needs ``pip install 'cqrs-saga[flask]'``.
"""

from __future__ import annotations

try:
    import flask
except ImportError as _error:  # pragma: no cover - exercised in a test with flask hidden
    raise ImportError(
        "cqrs.integrations.flask needs Flask, which is not installed: pip install 'cqrs-saga[flask]'"
    ) from _error

import atexit
import contextlib
import logging
import typing
import uuid
import weakref

import typing_extensions
from werkzeug.exceptions import HTTPException

from cqrs import correlation
from cqrs.config import SETTABLE, SagaConfig, unknown_key
from cqrs.integrations._endpoints import (
    Answer,
    Authorize,
    problem_answer,
    routes_for,
    still_running_answer,
)
from cqrs.integrations._endpoints import OperatorAction as OperatorAction
from cqrs.integrations._loop import block, shared_loop_thread
from cqrs.integrations._requests import Problem, build_context, parse_json_object
from cqrs.integrations._runtime import RecoveryOption, SagaRuntime, SagaStillRunning
from cqrs.integrations._runtime import SagaResult as SagaResult
from cqrs.integrations._sync import ASYNC_TWINS, VOCABULARY, SyncSagaApi, read_limited
from cqrs.integrations._webhooks import WebhookEndpoint, WebhookOptions
from cqrs.saga.mediator import SagaMediator

__all__ = [*VOCABULARY, *ASYNC_TWINS, "SagaExtension", "webhook_routes"]

logger = logging.getLogger("cqrs.integrations.flask")

C = typing.TypeVar("C")
EXTENSION_KEY = "cqrs_saga"


class SagaExtension:
    """Runs sagas for Flask apps: ``SagaExtension(app, ...)`` or ``ext.init_app(app, ...)``.

    Configuration is ``app.config`` keys with ``prefix`` (``CQRS_SAGA_STORAGE_URL``,
    ``CQRS_SAGA_MAX_BODY_BYTES``, ``CQRS_SAGA_RECOVERY``, ...: the fields of
    `SagaConfig`), overridden by keyword ``settings``; an unknown key under
    the prefix, or a value of the wrong type, is a `ValueError` naming it
    (and the closest valid key). ``sagas``, ``container``, ``event_map``,
    ``hooks`` ... are given here as objects; ``config`` replaces all of it
    with a ready `SagaConfig`. Arguments to `init_app` add to (and override)
    the constructor's.

    Per request it reads or makes the correlation id (``flask.g.correlation_id``)
    and echoes it; `Problem` errors and HTTP errors are answered as problem
    details, `SagaStillRunning` as 202 with the status link. The storage
    opens on first use (or `initialize`) on the shared saga loop, and closes
    at `close` or interpreter exit, after ``shutdown_grace`` seconds for
    running sagas.
    """

    def __init__(
        self,
        app: flask.Flask | None = None,
        *,
        config: SagaConfig | None = None,
        prefix: str = "CQRS_SAGA_",
        shutdown_grace: float = 10.0,
        status_path: str = "/sagas",
        recovery: RecoveryOption = None,
        **settings: typing.Any,
    ) -> None:
        self._options: dict[str, typing.Any] = {
            "config": config, "prefix": prefix, "shutdown_grace": shutdown_grace,
            "status_path": status_path, "recovery": recovery, **settings,
        }
        self._runtimes: dict[flask.Flask, SagaRuntime] = {}
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
        runtime_options = {name: opts.pop(name) for name in ("shutdown_grace", "status_path", "recovery")}
        if config is None:
            keys = {k[len(prefix):]: v for k, v in app.config.items() if k.startswith(prefix)}
            for key in keys:
                if key.lower() not in SETTABLE:
                    raise ValueError(unknown_key(f"app.config[{prefix + key!r}]", key.upper(),
                                                 sorted(prefix + n.upper() for n in SETTABLE)))
            config = SagaConfig.from_mapping(keys, where=f"app.config {prefix}", **opts)
        self._runtimes[app] = SagaRuntime(config, **runtime_options)
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
        app.register_error_handler(Problem, lambda error: _render(problem_answer(error)))
        app.register_error_handler(SagaStillRunning, lambda error: _render(still_running_answer(error)))
        app.register_error_handler(HTTPException, _http_error)
        if not self._exit_hook:
            shared_loop_thread()  # made first, so its exit hook (stopping the loop) runs after this one
            atexit.register(_close_at_exit, weakref.ref(self))
            self._exit_hook = True

    def runtime(self, app: flask.Flask | None = None) -> SagaRuntime:
        """The `SagaRuntime` of ``app`` (default: the current app, or the only one)."""
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
        """The `SagaConfig` of ``app``."""
        return self.runtime(app).config

    def initialize(self, app: flask.Flask | None = None) -> None:
        """Open the storage now instead of on first use (to fail fast at startup)."""
        block(self.runtime(app).open())

    def mediator(self, app: flask.Flask | None = None) -> SagaMediator:
        """The app's `SagaMediator` (opening the storage if needed); its coroutines run on the saga loop."""
        return block(self.runtime(app).open())

    def wait_for_sagas(self, timeout: float | None = None, app: flask.Flask | None = None) -> bool:
        """Wait for the app's background runs; False if some still run after ``timeout`` (they go on)."""
        runtime = self.runtime(app)
        return runtime.opened is False or block(runtime.wait_idle(timeout))

    def close(self, app: flask.Flask | None = None) -> None:
        """Give running sagas ``shutdown_grace`` seconds, then close the storage (every app's by default)."""
        runtimes = [self.runtime(app)] if app is not None else list(self._runtimes.values())
        for runtime in runtimes:
            if runtime.opened:
                block(runtime.aclose())


def _close_at_exit(ref: weakref.ref[SagaExtension]) -> None:
    extension = ref()
    if extension is not None:
        try:
            extension.close()
        except Exception:
            logger.exception("Closing the saga extension at exit failed")


def _current_runtime() -> SagaRuntime:
    extension = flask.current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(extension, SagaExtension):
        raise RuntimeError(f"No SagaExtension on {flask.current_app.name!r}: create SagaExtension(app, sagas=[...])")
    return extension.runtime()


def _sse_response(saga_id: uuid.UUID, chunks: typing.Iterator[str]) -> flask.Response:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Saga-ID": str(saga_id)}
    return flask.Response(chunks, mimetype="text/event-stream", headers=headers)


_api = SyncSagaApi(_current_runtime, _sse_response)
(run_saga, arun_saga, start_saga, astart_saga, saga_event_stream, saga_status, asaga_status, saga_history,
 asaga_history, saga_diagram, asaga_diagram, list_sagas, alist_sagas, wait_for_sagas) = _api.vocabulary()


def _read_body(limit: int) -> bytes:
    return read_limited(flask.request.stream, flask.request.headers.get("Content-Length"), limit)


def read_saga_context(context_type: type[C], *, max_bytes: int | None = None) -> C:
    """Build a ``context_type`` from the current request's JSON body, or raise a `Problem`.

    413 over ``max_bytes`` (default: the app's ``CQRS_SAGA_MAX_BODY_BYTES``);
    400 for a body that is not a JSON object (or nests too deeply, or holds
    text no database stores); 422 naming each field that does not fit.
    """
    limit = max_bytes if max_bytes is not None else _current_runtime().config.max_body_bytes
    return typing.cast(C, build_context(context_type, parse_json_object(_read_body(limit), max_bytes=limit)))


def _render(answer: Answer) -> flask.Response:
    return flask.Response(answer.content(), answer.status, answer.headers, content_type=answer.media_type)


def _http_error(error: HTTPException) -> flask.Response:
    valid = getattr(error, "valid_methods", None)
    headers = {"Allow": ", ".join(valid)} if valid else {}
    return _render(problem_answer(Problem(error.code or 500, error.description or error.name, headers=headers)))


def _flask_path(path: str) -> str:
    return path.replace("{correlation_id}", "<path:correlation_id>").replace("{", "<").replace("}", ">")


def operator_routes(
    *,
    prefix: str = "/sagas",
    health: str | None = "/health",
    authorize: Authorize | None = None,
    name: str = "cqrs_saga",
) -> flask.Blueprint:
    """A blueprint with the operator routes, read-only unless ``authorize`` is given.

    The routes of `cqrs.integrations.fastapi.operator_routes`: list, status,
    history, diagram and health; with ``authorize(request, action)`` (a
    plain function, True to allow) also recover, park and reset. Register it
    with ``app.register_blueprint``; pass ``status_path`` to the extension
    when ``prefix`` is not ``/sagas``.
    """
    bp = flask.Blueprint(name, __name__)
    prefix = prefix.rstrip("/")
    for route in routes_for(authorize):

        def view(saga_id: str = "", *, _name: str = route.name) -> flask.Response:
            query = {key: flask.request.args.getlist(key) for key in flask.request.args}
            return _render(
                _api.operator(_name, request=flask.request, saga_id=saga_id, query=query, read_body=_read_body,
                              authorize=authorize)
            )

        bp.add_url_rule(prefix + _flask_path(route.path), f"saga_{route.name}", view, methods=[route.method])
    if health is not None:
        bp.add_url_rule(health, "health", lambda: _render(_api.health()), methods=["GET"])
    return bp


def webhook_routes(
    *, prefix: str = "/webhooks", name: str = "cqrs_webhooks", **options: typing_extensions.Unpack[WebhookOptions]
) -> flask.Blueprint:
    """A blueprint starting sagas from signed events: the routes of
    `cqrs.integrations.fastapi.webhook_routes` (``options`` are the same), the sagas run on the shared
    saga loop (`wait_for_sagas` and `SagaExtension.close` wait for them)."""
    endpoint = WebhookEndpoint(**options)
    bp = flask.Blueprint(name, __name__)
    prefix = prefix.rstrip("/")

    def deliver(source: str) -> flask.Response:
        headers = dict(flask.request.headers.items())
        return _render(_api.deliver(endpoint, source, _read_body, headers))

    def status(source: str, correlation_id: str) -> flask.Response:
        return _render(_api.event_status(endpoint, source, correlation_id))

    bp.add_url_rule(prefix + "/<source>", "deliver_event", deliver, methods=["POST"])
    bp.add_url_rule(prefix + "/<source>/status/<path:correlation_id>", "event_status", status, methods=["GET"])
    return bp
