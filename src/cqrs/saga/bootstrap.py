"""Build a `SagaMediator` from a DI container, a saga mapper and a storage."""

from __future__ import annotations

import asyncio
import typing

from cqrs.container import as_container
from cqrs.events import EventDispatcher, EventMap
from cqrs.saga._engine import DEFAULT_COMPENSATION_RETRY, EngineSettings
from cqrs.saga.map import SagaMap
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.saga.storage.protocol import SagaStorage

__all__ = ["bootstrap"]


def bootstrap(
    di_container: typing.Any,
    sagas_mapper: typing.Callable[[SagaMap], None] | SagaMap,
    saga_storage: SagaStorage | None = None,
    *,
    domain_events_mapper: typing.Callable[[EventMap], None] | None = None,
    compensation_retry_count: int = DEFAULT_COMPENSATION_RETRY.attempts,
    compensation_retry_delay: float = DEFAULT_COMPENSATION_RETRY.delay,
    compensation_retry_backoff: float = DEFAULT_COMPENSATION_RETRY.backoff,
    lease_seconds: float = 30.0,
    sleep: typing.Callable[[float], typing.Awaitable[None]] = asyncio.sleep,
) -> SagaMediator:
    """Wire a mediator.

    ``di_container`` is a ``di.Container`` (or anything with an async
    ``resolve(type)``); step and event handler classes are built from it.
    ``sagas_mapper`` binds context types to sagas (a function receiving a
    `SagaMap`, or a ready map). ``saga_storage`` defaults to a new
    `MemorySagaStorage`. ``domain_events_mapper`` binds event types to handlers.

    Compensations are retried ``compensation_retry_count`` times in all, the
    n-th retry after ``compensation_retry_delay * compensation_retry_backoff **
    (n - 1)`` seconds. ``lease_seconds`` is how long a crashed runner keeps its
    sagas before recovery may take them over. ``sleep`` is the function waits
    go through (tests pass a fake one).
    """
    if isinstance(sagas_mapper, SagaMap):
        saga_map = sagas_mapper
    else:
        saga_map = SagaMap()
        sagas_mapper(saga_map)
    container = as_container(di_container)
    dispatcher = None
    if domain_events_mapper is not None:
        event_map = EventMap()
        domain_events_mapper(event_map)
        dispatcher = EventDispatcher(event_map, container)
    settings = EngineSettings(
        compensation_retry=RetryPolicy(
            attempts=compensation_retry_count,
            delay=compensation_retry_delay,
            backoff=compensation_retry_backoff,
        ),
        lease_seconds=lease_seconds,
        sleep=sleep,
    )
    return SagaMediator(
        saga_map,
        container,
        saga_storage if saga_storage is not None else MemorySagaStorage(),
        settings=settings,
        dispatcher=dispatcher,
    )
