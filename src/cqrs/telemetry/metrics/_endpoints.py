"""``/metrics`` for each framework: an ASGI app, a WSGI app, a Flask view and a Django view.

Each renders a registry (prometheus-client's global one by default) in the
format the scraper asks for (Prometheus text, or OpenMetrics when its
``Accept`` header says so).
"""

from __future__ import annotations

import typing

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["asgi_app", "django_view", "flask_view", "render", "wsgi_app"]

Scope = typing.MutableMapping[str, typing.Any]
Message = typing.MutableMapping[str, typing.Any]
Receive = typing.Callable[[], typing.Awaitable[Message]]
Send = typing.Callable[[Message], typing.Awaitable[None]]
ASGIApp = typing.Callable[[Scope, Receive, Send], typing.Awaitable[None]]
StartResponse = typing.Callable[..., typing.Any]
WSGIApp = typing.Callable[[dict[str, typing.Any], StartResponse], typing.Iterable[bytes]]


def render(registry: CollectorRegistry = REGISTRY, accept: str | None = None) -> tuple[bytes, str]:
    """The registry's samples as a scrape body, and its content type, for an ``Accept`` header."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def asgi_app(registry: CollectorRegistry = REGISTRY) -> ASGIApp:
    """An ASGI app answering every HTTP request with the metrics: ``app.mount("/metrics", asgi_app())``."""

    async def metrics(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        accept = next(
            (value.decode("latin-1") for name, value in scope.get("headers", ()) if name.lower() == b"accept"), None
        )
        body, content_type = render(registry, accept)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return metrics


def wsgi_app(registry: CollectorRegistry = REGISTRY) -> WSGIApp:
    """A WSGI app answering every request with the metrics (mount it with a WSGI dispatcher)."""

    def metrics(environ: dict[str, typing.Any], start_response: StartResponse) -> list[bytes]:
        body, content_type = render(registry, environ.get("HTTP_ACCEPT"))
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    return metrics


def flask_view(registry: CollectorRegistry = REGISTRY) -> typing.Callable[[], typing.Any]:
    """A Flask view of the metrics: ``app.add_url_rule("/metrics", "metrics", flask_view())``."""

    def metrics() -> typing.Any:
        from flask import Response, request

        body, content_type = render(registry, request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    return metrics


def django_view(registry: CollectorRegistry = REGISTRY) -> typing.Callable[[typing.Any], typing.Any]:
    """A Django view of the metrics: ``path("metrics", django_view())`` in a URLconf."""

    def metrics(request: typing.Any) -> typing.Any:
        from django.http import HttpResponse  # type: ignore[import-untyped]

        body, content_type = render(registry, request.headers.get("Accept"))
        return HttpResponse(body, content_type=content_type)

    return metrics
