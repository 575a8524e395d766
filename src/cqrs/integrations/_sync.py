"""The saga vocabulary for synchronous frameworks (Flask, Django), written once over a runtime.

`SyncSagaApi` gives, for the runtime its ``runtime_of`` finds (the current
Flask app's, the Django process's), the same names in a blocking form for
sync views and an awaitable form for async views: `run_saga` /
`arun_saga`, `start_saga` / `astart_saga`, `saga_status`, `saga_history`,
`saga_diagram`, `list_sagas` (each with its ``a`` twin) and `wait_for_sagas`.
The work itself runs on the process's shared saga loop.
"""

from __future__ import annotations

import concurrent.futures
import typing
import uuid

from cqrs import correlation
from cqrs.integrations._endpoints import (
    Answer,
    Authorize,
    OperatorAction,
    Query,
    authorize_sync,
    deliver_answer,
    event_status_answer,
    health_answer,
    operator_answer,
    problem_answer,
)
from cqrs.integrations._loop import await_in_loop, block, iterate
from cqrs.integrations._requests import Problem, check_content_length
from cqrs.integrations._runtime import SagaResult, SagaRuntime, SagaStillRunning

if typing.TYPE_CHECKING:
    from cqrs.integrations._webhooks import WebhookEndpoint

T = typing.TypeVar("T")
R = typing.TypeVar("R")
Make = typing.Callable[[SagaRuntime], typing.Coroutine[typing.Any, typing.Any, T]]

#: What every integration exports under the same names (FastAPI's take the request first).
VOCABULARY = (
    "OperatorAction", "Problem", "SagaResult", "SagaStillRunning", "list_sagas", "operator_routes",
    "read_saga_context", "run_saga", "saga_diagram", "saga_event_stream", "saga_history", "saga_status",
    "start_saga",
)
#: What the synchronous integrations add: the awaitable twins and waiting for background runs.
ASYNC_TWINS = (
    "alist_sagas", "arun_saga", "asaga_diagram", "asaga_history", "asaga_status", "astart_saga", "wait_for_sagas",
)

#: How long status, history, diagram, list and health queries may wait for the storage (then 503).
QUERY_TIMEOUT = 30.0


class SyncSagaApi(typing.Generic[R]):
    """The blocking and awaitable saga helpers over ``runtime_of()``.

    ``stream_response(saga_id, chunks)`` makes the framework's streamed
    response of Server-Sent Events; ``refuse`` (if given) makes the error a
    blocking helper raises when called from a thread running an event loop.
    """

    def __init__(
        self,
        runtime_of: typing.Callable[[], SagaRuntime],
        stream_response: typing.Callable[[uuid.UUID, typing.Iterator[str]], R],
        refuse: typing.Callable[[str], BaseException] | None = None,
    ) -> None:
        self.runtime_of = runtime_of
        self.stream_response = stream_response
        self.refuse = refuse

    def call(self, make: Make[T], timeout: float | None = None) -> T:
        """Run ``make(runtime)`` on the saga loop and wait; `Problem` 503 after ``timeout`` seconds."""
        runtime = self.runtime_of()
        try:
            return block(make(runtime), timeout, refuse=self.refuse)
        except SagaStillRunning:
            raise
        except concurrent.futures.TimeoutError:
            raise Problem(503, f"The saga storage did not answer within {timeout:g}s") from None

    async def acall(self, make: Make[T]) -> T:
        """Run ``make(runtime)`` on the saga loop and await it without blocking the caller's loop."""
        return await await_in_loop(make(self.runtime_of()))

    # -- running --------------------------------------------------------------------------

    def run_saga(
        self,
        saga_or_context: typing.Any,
        context: typing.Any = None,
        *,
        saga_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> SagaResult:
        """Run a new saga to its end from a sync view and return its `SagaResult`.

        Call as ``run_saga(context)`` (the saga bound to the context's type) or
        ``run_saga(OrderSaga, context)`` (the context may then be a dict,
        validated into it: 422 naming each bad field). The run happens on the
        saga loop while this thread waits. A failing step does not raise: the
        result says ``failed`` and carries the error. After ``timeout`` seconds
        `SagaStillRunning` is raised (answered 202 with the status link) and the
        saga runs on. A ``saga_id`` already stored is a 409. The correlation id
        defaults to the request's.
        """
        return self.call(
            lambda r: r.run_saga(
                saga_or_context, context, saga_id=saga_id, correlation_id=correlation_id, timeout=timeout
            )
        )

    async def arun_saga(
        self,
        saga_or_context: typing.Any,
        context: typing.Any = None,
        *,
        saga_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> SagaResult:
        """`run_saga` for async views; if the view is cancelled the saga still runs to its end."""
        return await self.acall(
            lambda r: r.run_saga(
                saga_or_context, context, saga_id=saga_id, correlation_id=correlation_id, timeout=timeout
            )
        )

    def start_saga(
        self,
        saga_or_context: typing.Any,
        context: typing.Any = None,
        *,
        saga_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
    ) -> uuid.UUID:
        """Record a new saga, run it in the background, and return its id at once (sync views).

        The saga is stored (with this process's lease) before this returns; if
        the process dies first, a recovery worker finishes it.
        """
        return self.call(
            lambda r: r.start_saga(saga_or_context, context, saga_id=saga_id, correlation_id=correlation_id)
        )

    async def astart_saga(
        self,
        saga_or_context: typing.Any,
        context: typing.Any = None,
        *,
        saga_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
    ) -> uuid.UUID:
        """`start_saga` for async views."""
        return await self.acall(
            lambda r: r.start_saga(saga_or_context, context, saga_id=saga_id, correlation_id=correlation_id)
        )

    def saga_event_stream(
        self,
        saga_or_context: typing.Any,
        context: typing.Any = None,
        *,
        saga_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
        keepalive: float | None = 15.0,
    ) -> R:
        """Record a new saga, run it in the background, and answer with its progress as Server-Sent Events.

        The saga is stored before this returns. The events are those of
        `cqrs.integrations.fastapi.saga_event_stream`: ``start``, each step's,
        and last ``completed``, ``failed`` or ``interrupted``; the saga id is
        in the ``X-Saga-ID`` header.
        """
        start, feed = self.call(
            lambda r: r.event_feed(saga_or_context, context, saga_id=saga_id, correlation_id=correlation_id)
        )
        return self.stream_response(feed.saga_id, iterate(feed.sse(start, keepalive=keepalive), refuse=self.refuse))

    def vocabulary(self) -> tuple[
        typing.Callable[..., SagaResult], typing.Callable[..., typing.Awaitable[SagaResult]],
        typing.Callable[..., uuid.UUID], typing.Callable[..., typing.Awaitable[uuid.UUID]],
        typing.Callable[..., R],
        typing.Callable[..., dict[str, typing.Any]], typing.Callable[..., typing.Awaitable[dict[str, typing.Any]]],
        typing.Callable[..., dict[str, typing.Any]], typing.Callable[..., typing.Awaitable[dict[str, typing.Any]]],
        typing.Callable[..., str], typing.Callable[..., typing.Awaitable[str]],
        typing.Callable[..., dict[str, typing.Any]], typing.Callable[..., typing.Awaitable[dict[str, typing.Any]]],
        typing.Callable[..., bool],
    ]:
        """The helpers a framework module exports, in this order: `run_saga`, `arun_saga`, `start_saga`,
        `astart_saga`, `saga_event_stream`, `saga_status`, `asaga_status`, `saga_history`, `asaga_history`,
        `saga_diagram`, `asaga_diagram`, `list_sagas`, `alist_sagas`, `wait_for_sagas`."""
        return (
            self.run_saga, self.arun_saga, self.start_saga, self.astart_saga, self.saga_event_stream,
            self.saga_status, self.asaga_status, self.saga_history, self.asaga_history,
            self.saga_diagram, self.asaga_diagram, self.list_sagas, self.alist_sagas, self.wait_for_sagas,
        )

    def wait_for_sagas(self, timeout: float | None = None) -> bool:
        """Wait for the background runs started so far; False if some still run after ``timeout``."""
        return self.call(lambda r: r.wait_idle(timeout))

    # -- reading --------------------------------------------------------------------------

    def saga_status(self, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
        """The stored saga as JSON (`cqrs.saga.views.saga_view`); `Problem` 404 unknown, 422 malformed id."""
        return self.call(lambda r: r.saga_status(saga_id), QUERY_TIMEOUT)

    async def asaga_status(self, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
        """`saga_status` for async views."""
        return await self.acall(lambda r: r.saga_status(saga_id))

    def saga_history(self, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
        """The saga's step log in write order: ``{"saga_id", "status", "history"}``."""
        return self.call(lambda r: r.saga_history(saga_id), QUERY_TIMEOUT)

    async def asaga_history(self, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
        """`saga_history` for async views."""
        return await self.acall(lambda r: r.saga_history(saga_id))

    def saga_diagram(self, saga_id: uuid.UUID | str) -> str:
        """Mermaid source of the saga's run, its completed, compensated and failed steps marked."""
        return self.call(lambda r: r.saga_diagram(saga_id), QUERY_TIMEOUT)

    async def asaga_diagram(self, saga_id: uuid.UUID | str) -> str:
        """`saga_diagram` for async views."""
        return await self.acall(lambda r: r.saga_diagram(saga_id))

    def list_sagas(self, **filters: typing.Any) -> dict[str, typing.Any]:
        """A page of stored sagas (see `SagaRuntime.list_sagas` for the filters and the cursor)."""
        return self.call(lambda r: r.list_sagas(**filters), QUERY_TIMEOUT)

    async def alist_sagas(self, **filters: typing.Any) -> dict[str, typing.Any]:
        """`list_sagas` for async views."""
        return await self.acall(lambda r: r.list_sagas(**filters))

    # -- the shared endpoints, for sync views --------------------------------------------------

    def operator(
        self,
        name: str,
        *,
        request: typing.Any,
        saga_id: str,
        query: Query,
        read_body: typing.Callable[[int], bytes],
        authorize: Authorize | None,
    ) -> Answer:
        """The answer of operator route ``name`` (``authorize`` asked first for actions)."""
        try:
            if authorize is not None and name in ACTIONS:
                denied = authorize_sync(authorize, request, OperatorAction(name, saga_id))
                if denied is not None:
                    return denied
            body = read_body(self.runtime_of().config.max_body_bytes) if name == "park" else b""
        except Problem as problem:
            return problem_answer(problem)
        return self.call(lambda r: operator_answer(r, name, saga_id=saga_id, query=query, body=body))

    def health(self) -> Answer:
        """The health route's answer."""
        return self.call(health_answer, QUERY_TIMEOUT)

    def deliver(
        self,
        endpoint: WebhookEndpoint,
        source: str,
        read_body: typing.Callable[[int], bytes],
        headers: typing.Mapping[str, str],
    ) -> Answer:
        """The answer to a webhook delivery (the body is read with the endpoint's limit)."""
        try:
            body = read_body(endpoint.limit(self.runtime_of().config))
        except Problem as problem:
            return problem_answer(problem)
        current = correlation.get_correlation_id()
        return self.call(lambda r: deliver_answer(r, endpoint, source, body, headers, current))

    def event_status(self, endpoint: WebhookEndpoint, source: str, correlation_id: str) -> Answer:
        """The answer of a webhook status route."""
        return self.call(lambda r: event_status_answer(r, endpoint, source, correlation_id), QUERY_TIMEOUT)


#: The operator routes that change a saga (behind the app's ``authorize`` hook).
ACTIONS = frozenset({"recover", "park", "reset"})


def read_limited(stream: typing.Any, declared: str | None, limit: int) -> bytes:
    """Read a WSGI body stream, refusing it with 413 once it is known to pass ``limit`` bytes."""
    check_content_length(declared, max_bytes=limit)
    body = bytearray()
    while chunk := stream.read(min(65536, limit + 1 - len(body))):
        body += chunk
        if len(body) > limit:
            raise Problem(413, f"The request body is over the limit of {limit} bytes")
    return bytes(body)
