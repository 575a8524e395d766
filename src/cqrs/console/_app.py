"""`SagaConsole`: the saga console as an ASGI application."""

from __future__ import annotations

import asyncio
import datetime
import importlib.resources
import inspect
import re
import typing
import urllib.parse
import uuid

from cqrs.console import _pages
from cqrs.console._http import ConsoleRequest, Receive, Response, Scope, Send, read_request
from cqrs.saga.apps import mediator_from, resolve
from cqrs.saga.exceptions import SagaNotFoundError
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.operations import ACTIONS, OperationRefusedError, SagaOperations
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.models import SagaLogEntry
from cqrs.saga.storage.protocol import SagaStorage

if typing.TYPE_CHECKING:
    from cqrs.console._wsgi import WSGIConsole

__all__ = ["Authorize", "SagaConsole", "read_only"]

#: ``authorize(request, action)``: may this request take ``action`` (one of `ACTIONS`)? May be async.
Authorize = typing.Callable[[ConsoleRequest, str], bool | typing.Awaitable[bool]]
Actor = typing.Callable[[ConsoleRequest], str | typing.Awaitable[str]]

_STATIC = {
    "mermaid.min.js": "text/javascript; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "mermaid.LICENSE": "text/plain; charset=utf-8",
    "THIRD_PARTY.md": "text/plain; charset=utf-8",
}
_DETAIL = re.compile(r"^/sagas/([0-9a-fA-F-]{32,36})$")
_ACTION = re.compile(r"^/sagas/([0-9a-fA-F-]{32,36})/actions/([a-z]+)$")


def read_only(request: ConsoleRequest, action: str) -> bool:
    """The default authorization: every action refused (the console only shows)."""
    return False


class SagaConsole:
    """A web console over stored sagas: an ASGI app (``app.mount("/sagas", SagaConsole(...))``).

    ``source`` is where the sagas are: a storage, a `SagaMediator` (its
    storage and definitions), a storage URL (opened on the first request,
    closed by `aclose` or the ASGI lifespan), or a callable returning one of
    those (awaited if need be; called on the first request, in the loop that
    serves it). ``sagas`` (a `SagaMap` or a list of saga classes) gives the
    definitions when ``source`` is a storage: with them the run is drawn over
    its definition and the actions that run saga code are offered.

    ``authorize(request, action)`` says whether a request may take an action
    (`ACTIONS`: park, reset, recover, rerun, retry, resolve, skip); the
    default, `read_only`, refuses every one, so the console only shows.
    ``actor(request)`` names who acted, in the notes written to the saga's
    history (default ``console``). For Flask and Django, `wsgi` gives a WSGI
    app of the same console.
    """

    def __init__(
        self,
        source: typing.Any,
        *,
        sagas: typing.Any = None,
        authorize: Authorize = read_only,
        actor: Actor | None = None,
        page_size: int = 50,
    ) -> None:
        self._source = source
        self._sagas = sagas
        self.authorize = authorize
        self.actor = actor
        self.page_size = page_size
        self._opened: tuple[SagaStorage, SagaMediator | None] | None = None
        self._owned: SagaStorage | None = None
        self._lock: asyncio.Lock | None = None
        self._static: dict[str, bytes] = {}

    # -- ASGI -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"SagaConsole serves HTTP, not {scope['type']!r}")
        request = await read_request(scope, receive)
        response = await self.handle(request)
        await response.send(send)

    async def handle(self, request: ConsoleRequest) -> Response:
        """The response to one request."""
        base = request.root_path.rstrip("/")
        path = request.path
        if request.method == "GET" and path.startswith("/static/"):
            return self._static_file(path[len("/static/"):])
        if request.method in ("GET", "HEAD") and path in ("/", ""):
            return await self._list(request, base)
        detail = _DETAIL.match(path)
        if detail and request.method in ("GET", "HEAD"):
            return await self._detail(request, base, uuid.UUID(detail.group(1)))
        action = _ACTION.match(path)
        if action and request.method == "POST":
            return await self._act(request, base, uuid.UUID(action.group(1)), action.group(2))
        return _html(404, _pages.message_page(base, 404, f"Nothing at {path}"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def wsgi(self) -> WSGIConsole:
        """This console as a WSGI app (for Flask and Django), serving from an event loop of its own."""
        from cqrs.console._wsgi import WSGIConsole

        return WSGIConsole(self)

    async def aclose(self) -> None:
        """Close the storage the console opened from a URL (not one it was given)."""
        if self._owned is not None:
            owned, self._owned, self._opened = self._owned, None, None
            await owned.close()

    # -- where the sagas are -------------------------------------------------------------------------

    async def _open(self) -> tuple[SagaStorage, SagaMediator | None]:
        if self._opened is not None:
            return self._opened
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._opened is None:
                source = self._source
                if isinstance(source, str):
                    from cqrs.config import open_storage

                    source = self._owned = await open_storage(source, create_tables=False)
                else:
                    source = await resolve(source)
                if isinstance(source, SagaMediator):
                    self._opened = (source.storage, source)
                else:
                    mediator = None if self._sagas is None else await mediator_from(self._sagas, source, what="sagas")
                    self._opened = (source, mediator)
        return self._opened

    async def _operations(self, request: ConsoleRequest) -> SagaOperations:
        storage, mediator = await self._open()
        actor = "console"
        if self.actor is not None:
            named = self.actor(request)
            actor = await named if inspect.isawaitable(named) else named
        return SagaOperations(storage, mediator=mediator, actor=actor)

    async def _may(self, request: ConsoleRequest, action: str) -> bool:
        allowed = self.authorize(request, action)
        return bool(await allowed if inspect.isawaitable(allowed) else allowed)

    # -- pages ---------------------------------------------------------------------------------------------

    async def _list(self, request: ConsoleRequest, base: str) -> Response:
        storage, _ = await self._open()
        filters = {name: request.param(name).strip() for name in ("q", "status", "name", "older_than")}
        query = filters["q"]
        correlation_id = None
        if query:
            try:
                saga_id = uuid.UUID(query)
            except ValueError:
                correlation_id = query
            else:
                if await storage.get_saga(saga_id) is not None:
                    return Response.redirect(f"{base}/sagas/{saga_id}")
                page = _pages.list_page(base, [], _now(), filters, None, f"No saga with id {saga_id}.")
                return _html(404, page)
        statuses = [SagaStatus(s) for s in request.query.get("status", []) if s in SagaStatus._value2member_map_]
        older_than = None
        if filters["older_than"].isdigit():
            older_than = datetime.timedelta(seconds=int(filters["older_than"]))
        after = None
        cursor = request.param("after")
        if cursor:
            try:
                after = await storage.get_saga(uuid.UUID(cursor))
            except ValueError:
                after = None
        records = await storage.list_sagas(
            status=statuses or None, name=filters["name"] or None, older_than=older_than,
            correlation_id=correlation_id, after=after, limit=self.page_size + 1,
        )
        more = len(records) > self.page_size
        records = records[: self.page_size]
        next_cursor = str(records[-1].saga_id) if more else None
        return _html(200, _pages.list_page(base, records, _now(), filters, next_cursor, request.param("done")))

    async def _detail(
        self, request: ConsoleRequest, base: str, saga_id: uuid.UUID, error: str = "", status: int = 200
    ) -> Response:
        ops = await self._operations(request)
        try:
            record, history = await ops.load(saga_id)
        except SagaNotFoundError as missing:
            return _html(404, _pages.message_page(base, 404, str(missing)))
        allowed = ops.allowed(record, history)
        may = {action: await self._may(request, action) for action in ACTIONS}
        shown = {action: reason for action, reason in allowed.items() if may[action]}
        outstanding = ops.outstanding(history)
        defaults = {"rerun": ops.next_step(record, history) or "", "skip": outstanding[0] if outstanding else ""}
        page = _pages.detail_page(
            base, record, history, _now(), self._diagram(ops, record.name, history), shown, any(may.values()),
            defaults, request.param("done"), error,
        )
        return _html(status, page)

    def _diagram(self, ops: SagaOperations, name: str, history: list[SagaLogEntry]) -> str:
        saga_type = None if ops.mediator is None else ops.mediator.saga_map.by_name(name)
        if saga_type is not None:
            from cqrs.saga.mermaid import SagaMermaid

            return SagaMermaid(saga_type).run_diagram(history)
        return _history_flowchart(name, history)

    async def _act(self, request: ConsoleRequest, base: str, saga_id: uuid.UUID, action: str) -> Response:
        origin = request.headers.get("origin")
        if origin and urllib.parse.urlsplit(origin).netloc != request.headers.get("host"):
            return _html(403, _pages.message_page(base, 403, "Cross-site form posts are refused."))
        if action not in ACTIONS or not await self._may(request, action):
            return _html(403, _pages.message_page(base, 403, f"You may not {action} sagas here."))
        ops = await self._operations(request)
        note = request.form.get("note", "").strip()
        step = request.form.get("step", "").strip()
        try:
            if action == "retry":
                result = await ops.retry_compensations(saga_id, note)
            elif action == "resolve":
                result = await ops.resolve(saga_id, note)
            elif action == "skip":
                result = await ops.skip_compensation(saga_id, step, note)
            elif action == "rerun":
                result = await ops.rerun(saga_id, step, note)
            elif action == "recover":
                result = await ops.recover(saga_id)
            elif action == "reset":
                result = await ops.reset(saga_id, note)
            else:
                result = await ops.park(saga_id, note)
        except SagaNotFoundError as missing:
            return _html(404, _pages.message_page(base, 404, str(missing)))
        except OperationRefusedError as refused:
            return await self._detail(request, base, saga_id, error=str(refused), status=409)
        return Response.redirect(f"{base}/sagas/{saga_id}?{urllib.parse.urlencode({'done': result.message})}")

    def _static_file(self, name: str) -> Response:
        content_type = _STATIC.get(name)
        if content_type is None:
            return Response(404, b"not found", "text/plain; charset=utf-8")
        body = self._static.get(name)
        if body is None:
            body = self._static[name] = (importlib.resources.files("cqrs.console") / "static" / name).read_bytes()
        return Response(200, body, content_type, [("cache-control", "public, max-age=86400")])


def _html(status: int, page: str) -> Response:
    return Response(status, page.encode("utf-8"))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _history_flowchart(name: str, history: list[SagaLogEntry]) -> str:
    """A flowchart of the steps the history names, for a saga whose definition the console was not given."""

    def label(text: str) -> str:
        return re.sub(r"[^0-9A-Za-z_ .-]", " ", text)

    lines = ["flowchart LR", f'    saga(["{label(name)}"])']
    seen: dict[str, str] = {}
    for entry in history:
        if entry.step_name.startswith("@") or entry.step_name in seen:
            continue
        seen[entry.step_name] = f"s{len(seen)}"
    last: dict[str, str] = {}
    for entry in history:
        if entry.step_name in seen:
            last[entry.step_name] = f"{entry.action} {entry.status.value}"
    previous = "saga"
    for step, node in seen.items():
        lines.append(f'    {node}["{label(step)}<br/>{label(last[step])}"]')
        lines.append(f"    {previous} --> {node}")
        previous = node
    return "\n".join(lines) + "\n"
