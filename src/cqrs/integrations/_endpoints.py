"""The HTTP endpoints every integration mounts, written once: operator routes, health and webhooks.

Each handler takes what a request carries (path values, query, body,
headers) as plain Python values and returns an `Answer` (status, body,
media type, headers); a framework adapter only reads its request into these
values and renders the answer. Refusals are `Problem` answers
(``application/problem+json``); no input makes a handler raise.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing

from cqrs.integrations._requests import (
    PROBLEM_JSON,
    Problem,
    check_text,
    parse_duration,
    parse_json_object,
)
from cqrs.integrations._runtime import SagaRuntime, SagaStillRunning
from cqrs.saga.storage.enums import SagaStatus

if typing.TYPE_CHECKING:
    from cqrs.integrations._webhooks import WebhookEndpoint

Query = typing.Mapping[str, typing.Sequence[str]]
#: ``authorize(request, action)``: may the request's caller take ``action`` (an `OperatorAction`)?
Authorize = typing.Callable[[typing.Any, "OperatorAction"], "bool | typing.Awaitable[bool]"]


@dataclasses.dataclass(frozen=True)
class Answer:
    """What an endpoint answers; adapters render it as their framework's response."""

    status: int
    body: typing.Any
    media_type: str = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def content(self) -> bytes:
        """The body as bytes: text as UTF-8, anything else as ASCII-safe JSON."""
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body, separators=(",", ":")).encode("ascii")


def json_answer(body: typing.Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, body, "application/json", dict(headers or {}))


def problem_answer(problem: Problem, instance: str | None = None) -> Answer:
    """A `Problem` as RFC 9457 problem details."""
    return Answer(problem.status, problem.to_dict(instance), PROBLEM_JSON, dict(problem.headers))


def still_running_answer(error: SagaStillRunning) -> Answer:
    """A run that outlasted its wait: 202 with the status link (body and ``Location``)."""
    return json_answer(error.to_dict(), 202, {"Location": error.status_url})


# -- operator routes ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OperatorAction:
    """What an operator asks for: ``name`` (``recover``, ``park`` or ``reset``) on the saga ``saga_id``."""

    name: str
    saga_id: str


@dataclasses.dataclass(frozen=True)
class Route:
    """One operator route: ``method``, ``path`` under the prefix, the handler ``name``."""

    method: str
    path: str
    name: str

    @property
    def is_action(self) -> bool:
        return self.method == "POST"


#: The operator routes, under a prefix (``/sagas``); actions only with an ``authorize`` hook.
OPERATOR_ROUTES = (
    Route("GET", "", "list"),
    Route("GET", "/{saga_id}", "status"),
    Route("GET", "/{saga_id}/history", "history"),
    Route("GET", "/{saga_id}/diagram", "diagram"),
    Route("POST", "/{saga_id}/recover", "recover"),
    Route("POST", "/{saga_id}/park", "park"),
    Route("POST", "/{saga_id}/reset", "reset"),
)


def routes_for(authorize: Authorize | None) -> tuple[Route, ...]:
    """The operator routes to mount: read-only without an ``authorize`` hook."""
    if authorize is not None and not callable(authorize):
        raise TypeError(f"authorize must be a function of (request, action), got {authorize!r}")
    return tuple(r for r in OPERATOR_ROUTES if authorize is not None or not r.is_action)


def refused(allowed: bool, action: OperatorAction) -> Answer | None:
    """The 403 answer when ``authorize`` said no."""
    if allowed is True:
        return None
    return problem_answer(Problem(403, f"Not allowed to {action.name} saga {action.saga_id}"))


def authorize_sync(authorize: Authorize, request: typing.Any, action: OperatorAction) -> Answer | None:
    """Ask a synchronous app's hook (a coroutine function is refused: Flask and Django views are sync)."""
    verdict = authorize(request, action)
    if inspect.isawaitable(verdict):
        close = getattr(verdict, "close", None)
        if close is not None:
            close()
        raise TypeError("authorize must be a plain function here (it runs in the request's thread)")
    return refused(bool(verdict), action)


async def authorize_async(authorize: Authorize, request: typing.Any, action: OperatorAction) -> Answer | None:
    """Ask an async app's hook (a plain function or a coroutine function)."""
    verdict = authorize(request, action)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return refused(bool(verdict), action)


def _one(query: Query, name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise Problem(422, f"Give the query parameter {name} once")
    return check_text(values[-1], f"the query parameter {name}", status=422)


def parse_list_query(query: Query) -> dict[str, typing.Any]:
    """`SagaRuntime.list_sagas` keywords from a query: ``status`` (repeated or comma-separated),
    ``name``, ``correlation_id``, ``older_than`` (``30s``, ``5m``, ``2h``, ``1d``), ``cursor``, ``limit``."""
    options: dict[str, typing.Any] = {}
    statuses: list[SagaStatus] = []
    for raw in query.get("status", ()):
        for part in filter(None, check_text(raw, "the query parameter status", status=422).split(",")):
            try:
                statuses.append(SagaStatus(part.strip()))
            except ValueError:
                known = ", ".join(s.value for s in SagaStatus)
                raise Problem(422, f"status {part[:40]!r} is not one of {known}") from None
    if statuses:
        options["status"] = statuses
    for name in ("name", "correlation_id", "cursor"):
        value = _one(query, name)
        if value is not None:
            options[name] = value
    older_than = _one(query, "older_than")
    if older_than is not None:
        try:
            options["older_than"] = parse_duration(older_than)
        except ValueError as error:
            raise Problem(422, f"older_than: {error}") from None
    limit = _one(query, "limit")
    if limit is not None:
        if not (limit.isascii() and limit.isdigit() and len(limit) <= 6):
            raise Problem(422, f"limit must be a whole number, got {limit[:40]!r}")
        options["limit"] = int(limit)
    return options


async def operator_answer(
    runtime: SagaRuntime, name: str, *, saga_id: str = "", query: Query | None = None, body: bytes = b""
) -> Answer:
    """The answer of operator route ``name`` (see `OPERATOR_ROUTES`)."""
    query = query or {}
    try:
        if name == "list":
            return json_answer(await runtime.list_sagas(**parse_list_query(query)))
        if name == "status":
            return json_answer(await runtime.saga_status(saga_id))
        if name == "history":
            return json_answer(await runtime.saga_history(saga_id))
        if name == "diagram":
            fmt = _one(query, "format") or "text"
            if fmt not in ("text", "mermaid", "json"):
                raise Problem(422, f"format must be 'text' or 'json', got {fmt[:40]!r}")
            if fmt == "json":
                return json_answer(await runtime.saga_diagram_document(saga_id))
            return Answer(200, await runtime.saga_diagram(saga_id), "text/plain; charset=utf-8")
        if name == "recover":
            answer = await runtime.recover_saga(saga_id)
            return json_answer(answer, 202, {"Location": answer["status_url"]})
        if name == "park":
            reason = ""
            if body.strip():
                data = parse_json_object(body, max_bytes=runtime.config.max_body_bytes)
                reason = data.get("reason", "")
                if not isinstance(reason, str):
                    raise Problem(422, "reason must be text", [{"field": "reason", "message": "must be a string"}])
            return json_answer(await runtime.park_saga(saga_id, reason))
        if name == "reset":
            return json_answer(await runtime.reset_saga(saga_id))
        raise LookupError(name)
    except Problem as problem:
        return problem_answer(problem)


async def health_answer(runtime: SagaRuntime) -> Answer:
    """200 with what the runtime runs when the storage answers; 503 problem when it does not."""
    try:
        return json_answer(await runtime.health())
    except Problem as problem:
        return problem_answer(problem)


# -- webhooks ---------------------------------------------------------------------------------


async def deliver_answer(
    runtime: SagaRuntime,
    endpoint: WebhookEndpoint,
    source: str,
    body: bytes,
    headers: typing.Mapping[str, str],
    correlation_id: str | None,
) -> Answer:
    """``POST {prefix}/{source}``: 202 with the `AcceptedEvent`, or the refusal's problem."""
    try:
        dispatcher = endpoint.dispatcher(runtime.config)
        accepted = await runtime.accept_event(dispatcher, source, body, headers, correlation_id)
    except Problem as problem:
        return problem_answer(problem)
    return json_answer(accepted.as_json(), 202)


async def event_status_answer(
    runtime: SagaRuntime, endpoint: WebhookEndpoint, source: str, correlation_id: str
) -> Answer:
    """``GET {prefix}/{source}/status/{correlation_id}``: what the event started, or 404."""
    try:
        return json_answer(await runtime.event_status(endpoint.dispatcher(runtime.config), source, correlation_id))
    except Problem as problem:
        return problem_answer(problem)
