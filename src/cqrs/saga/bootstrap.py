"""Build a `SagaMediator` from a container, the saga bindings and a storage.

``bootstrap`` takes python-cqrs's parameters, in its order, with their meaning
there, so ``from cqrs.saga import bootstrap; bootstrap.bootstrap(...)`` runs
unchanged; this library's own knobs are keyword-only after them.
"""

from __future__ import annotations

import asyncio
import typing

from cqrs.container.scope import ScopeStrategy
from cqrs.events import EventEmitter, EventMap
from cqrs.message_brokers.devnull import DevnullMessageBroker
from cqrs.message_brokers.protocol import MessageBroker
from cqrs.saga.map import SagaMap
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.settings import DEFAULT_COMPENSATION_RETRY, EngineSettings
from cqrs.saga.storage.protocol import SagaStorage

__all__ = ["bootstrap"]


def bootstrap(
    di_container: typing.Any,
    message_broker: MessageBroker | None = None,
    middlewares: typing.Sequence[typing.Any] | None = None,
    sagas_mapper: typing.Callable[[SagaMap], None] | SagaMap | None = None,
    domain_events_mapper: typing.Callable[[EventMap], None] | None = None,
    on_startup: typing.Sequence[typing.Callable[[], typing.Any]] | None = None,
    saga_storage: SagaStorage | None = None,
    max_concurrent_event_handlers: int = 1,
    concurrent_event_handle_enable: bool | None = None,
    scope_strategy: ScopeStrategy = ScopeStrategy.NONE,
    *,
    serializer: typing.Any = None,
    compensation_retry_count: int = DEFAULT_COMPENSATION_RETRY.attempts,
    compensation_retry_delay: float = DEFAULT_COMPENSATION_RETRY.delay,
    compensation_retry_backoff: float = DEFAULT_COMPENSATION_RETRY.backoff,
    lease_seconds: float = 30.0,
    compensation_commits: typing.Literal["together", "each"] = "together",
    sleep: typing.Callable[[float], typing.Awaitable[None]] = asyncio.sleep,
    hooks: typing.Iterable[object] = (),
    outbox: bool = False,
    telemetry: bool = True,
) -> SagaMediator:
    """Wire a mediator.

    ``di_container`` is a ``di.Container`` (wrapped for you) or any container
    with an async ``resolve(type)``; steps and event handlers are built from
    it. ``sagas_mapper`` binds context types to sagas (a function receiving a
    `SagaMap`, or a ready map). ``saga_storage`` defaults to a new
    `MemorySagaStorage`. ``domain_events_mapper`` binds event types to
    handlers; ``message_broker`` receives notification events (default: one
    that drops them with a warning). ``on_startup`` callables run first.
    ``max_concurrent_event_handlers``, ``concurrent_event_handle_enable`` and
    ``scope_strategy`` mean what they mean for `SagaMediator`. ``middlewares``
    and ``serializer`` are accepted for python-cqrs compatibility; saga runs
    use neither.

    Keyword-only: compensations are retried ``compensation_retry_count`` times
    in all, the n-th retry after ``compensation_retry_delay *
    compensation_retry_backoff ** (n - 1)`` seconds. ``lease_seconds`` is how
    long a crashed runner keeps its sagas before recovery may take them over.
    ``compensation_commits``: a failed saga's compensations recorded
    ``"together"`` in one commit or ``"each"`` in its own (`EngineSettings`).
    ``sleep`` is the function waits go through (tests pass a fake one).
    ``hooks`` observe every run (`cqrs.saga.hooks.SagaHook`). ``outbox``:
    notification events are written to the outbox with their step instead of
    sent to ``message_broker``. ``telemetry``: the default hooks of
    `cqrs.telemetry` (see `SagaMediator`), on unless False.
    """
    if message_broker is not None and not callable(getattr(message_broker, "send_message", None)):
        raise TypeError(
            f"bootstrap's second parameter is message_broker (python-cqrs's order), got {message_broker!r}; "
            "pass the saga bindings and storage by keyword: bootstrap(container, sagas_mapper=..., saga_storage=...)"
        )
    for startup in on_startup or ():
        startup()
    if isinstance(sagas_mapper, SagaMap):
        saga_map = sagas_mapper
    else:
        saga_map = SagaMap()
        if sagas_mapper is not None:
            sagas_mapper(saga_map)
    event_map = EventMap()
    if domain_events_mapper is not None:
        domain_events_mapper(event_map)
    mediator_container = di_container
    emitter = None
    if event_map or message_broker is not None:
        emitter = EventEmitter(
            event_map,
            di_container,
            message_broker if message_broker is not None else DevnullMessageBroker(),
            scope_strategy,
            serializer=serializer,
        )
        mediator_container = emitter.container  # one wrapper, shared by steps and handlers
    settings = EngineSettings(
        compensation_retry=RetryPolicy(
            attempts=compensation_retry_count,
            delay=compensation_retry_delay,
            backoff=compensation_retry_backoff,
        ),
        lease_seconds=lease_seconds,
        sleep=sleep,
        compensation_commits=compensation_commits,
    )
    return SagaMediator(
        saga_map,
        mediator_container,
        event_emitter=emitter,
        middleware_chain=list(middlewares or ()),
        max_concurrent_event_handlers=max_concurrent_event_handlers,
        concurrent_event_handle_enable=concurrent_event_handle_enable,
        storage=saga_storage,
        scope_strategy=scope_strategy,
        settings=settings,
        hooks=hooks,
        outbox=outbox,
        telemetry=telemetry,
    )
