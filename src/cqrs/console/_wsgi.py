"""The console for WSGI frameworks (Flask, Django): requests handed to an event loop the adapter runs.

`WSGIConsole` runs the console's ASGI app on one event loop in a daemon
thread, so its storage (asyncpg pools are bound to a loop) lives in that loop
only; each WSGI request waits for its response there. `dispatch` mounts WSGI
apps under path prefixes, for a ``wsgi.py`` (Django) that has nothing like
werkzeug's ``DispatcherMiddleware``.
"""

from __future__ import annotations

import asyncio
import threading
import typing

if typing.TYPE_CHECKING:
    from cqrs.console._app import SagaConsole

__all__ = ["WSGIConsole", "dispatch"]

Environ = dict[str, typing.Any]
StartResponse = typing.Callable[..., typing.Any]
WSGIApp = typing.Callable[[Environ, StartResponse], typing.Iterable[bytes]]

_REASONS = {200: "OK", 303: "See Other", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 500: "Error"}


class WSGIConsole:
    """A `SagaConsole` as a WSGI application (see the module docstring); `close` stops its loop."""

    def __init__(self, console: SagaConsole, *, timeout: float = 60.0) -> None:
        self.console = console
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Lock()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._started:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="cqrs-saga-console", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def __call__(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        script = environ.get("SCRIPT_NAME", "")
        body = b""
        length = environ.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length):
            body = environ["wsgi.input"].read(int(length))
        headers = [
            (key[5:].replace("_", "-").lower().encode("latin-1"), str(value).encode("latin-1"))
            for key, value in environ.items() if key.startswith("HTTP_")
        ]
        if environ.get("CONTENT_TYPE"):
            headers.append((b"content-type", environ["CONTENT_TYPE"].encode("latin-1")))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": environ.get("REQUEST_METHOD", "GET"), "scheme": environ.get("wsgi.url_scheme", "http"),
            "root_path": script, "path": script + (environ.get("PATH_INFO") or "/"),
            "query_string": environ.get("QUERY_STRING", "").encode("latin-1"), "headers": headers,
            "wsgi_environ": environ,
        }
        sent: list[typing.MutableMapping[str, typing.Any]] = []

        async def receive() -> dict[str, typing.Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: typing.MutableMapping[str, typing.Any]) -> None:
            sent.append(message)

        future = asyncio.run_coroutine_threadsafe(self.console(scope, receive, send), self._running_loop())
        future.result(self.timeout)
        start = next(m for m in sent if m["type"] == "http.response.start")
        status = int(start["status"])
        start_response(
            f"{status} {_REASONS.get(status, 'Status')}",
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in start["headers"]],
        )
        return [b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")]

    def close(self) -> None:
        """Close the console's storage (if it opened one) and stop the loop thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.console.aclose(), loop).result(self.timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self.timeout)
        loop.close()
        self._loop = self._thread = None


def dispatch(app: WSGIApp, mounts: typing.Mapping[str, WSGIApp]) -> WSGIApp:
    """A WSGI app that sends requests under each prefix of ``mounts`` to its app, the rest to ``app``.

    ``application = dispatch(get_wsgi_application(), {"/sagas": console.wsgi()})`` in a Django
    ``wsgi.py``. The prefix moves from ``PATH_INFO`` to ``SCRIPT_NAME``, as mounting does.
    """
    ordered = sorted(mounts.items(), key=lambda item: len(item[0]), reverse=True)

    def application(environ: Environ, start_response: StartResponse) -> typing.Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        for prefix, mounted in ordered:
            prefix = prefix.rstrip("/")
            if path == prefix or path.startswith(prefix + "/"):
                environ = {**environ, "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + prefix,
                           "PATH_INFO": path[len(prefix):] or "/"}
                return mounted(environ, start_response)
        return app(environ, start_response)

    return application
