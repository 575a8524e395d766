"""The little HTTP the console needs, on plain ASGI: a request read from a scope, responses sent back."""

from __future__ import annotations

import dataclasses
import typing
import urllib.parse

__all__ = ["ConsoleRequest", "Response", "read_request"]

Scope = typing.MutableMapping[str, typing.Any]
Message = typing.MutableMapping[str, typing.Any]
Receive = typing.Callable[[], typing.Awaitable[Message]]
Send = typing.Callable[[Message], typing.Awaitable[None]]

_MAX_BODY = 64 * 1024


@dataclasses.dataclass(frozen=True)
class ConsoleRequest:
    """A request to the console, as the authorization hook sees it.

    ``path`` is relative to where the console is mounted (``root_path``);
    ``headers`` has lower-case names; ``scope`` is the raw ASGI scope (a
    framework's middleware may have put the user there, e.g. ``scope["user"]``).
    """

    method: str
    path: str
    root_path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    form: dict[str, str]
    scope: Scope

    def param(self, name: str, default: str = "") -> str:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclasses.dataclass
class Response:
    """A response to send: status, body, content type, extra headers."""

    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @classmethod
    def redirect(cls, location: str) -> Response:
        return cls(303, b"", headers=[("location", location)])

    async def send(self, send: Send) -> None:
        headers = [(b"content-type", self.content_type.encode()), (b"content-length", str(len(self.body)).encode())]
        headers += [(b"x-content-type-options", b"nosniff")]
        headers += [(name.encode(), value.encode()) for name, value in self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


async def read_request(scope: Scope, receive: Receive) -> ConsoleRequest:
    """The request of an ``http`` scope, with its form body read (urlencoded, up to 64 KiB)."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
    body = b""
    if scope.get("method") == "POST":
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > _MAX_BODY:
                body = b""
                break
    form: dict[str, str] = {}
    if body and headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
    root_path = scope.get("root_path", "") or ""
    path = scope.get("path", "/") or "/"
    if root_path and path.startswith(root_path):
        path = path[len(root_path):] or "/"
    query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return ConsoleRequest(scope.get("method", "GET"), path, root_path, query, headers, form, scope)
