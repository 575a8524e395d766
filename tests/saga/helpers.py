"""Shared pieces for the saga engine behaviour tests (tests/saga/).

Nothing here sleeps: waits go through `FakeSleep`, which records the delays it
is asked for, and storage time goes through `FakeClock`, which tests move by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import typing
import uuid

import di

import cqrs
from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.step import SagaStepResult
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.saga.storage.models import SagaLogEntry

Result = SagaStepResult[typing.Any, typing.Any]


class FakeSleep:
    """An async ``sleep`` that returns at once and records every delay it was asked for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class FakeClock:
    """A clock for `MemorySagaStorage(clock=...)` that only moves when told to."""

    def __init__(self, start: datetime.datetime | None = None) -> None:
        self.now = start or datetime.datetime.now(datetime.timezone.utc)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@dataclasses.dataclass
class Harness:
    """A mediator with the storage, fake sleep and container it was built from."""

    mediator: SagaMediator
    storage: MemorySagaStorage
    sleep: FakeSleep
    container: typing.Any

    async def run_all(
        self, context: typing.Any, saga_id: uuid.UUID | None = None, **kwargs: typing.Any
    ) -> list[Result]:
        return [result async for result in self.mediator.stream(context, saga_id=saga_id, **kwargs)]

    async def history(self, saga_id: uuid.UUID) -> list[tuple[str, str, str]]:
        """The step log as (step_name, action, status) triples."""
        return rows(await self.storage.get_step_history(saga_id))

    async def status(self, saga_id: uuid.UUID) -> cqrs.SagaStatus:
        status, _, _ = await self.storage.load_saga_state(saga_id)
        return status


def rows(history: list[SagaLogEntry]) -> list[tuple[str, str, str]]:
    return [(entry.step_name, entry.action, str(entry.status)) for entry in history]


def make_harness(
    *bindings: tuple[type[typing.Any], type[cqrs.Saga[typing.Any]]],
    storage: MemorySagaStorage | None = None,
    container: typing.Any = None,
    **bootstrap_kwargs: typing.Any,
) -> Harness:
    """Bootstrap a mediator for ``(context_type, saga_type)`` bindings with a fake sleep."""
    sleep = FakeSleep()
    storage = storage if storage is not None else MemorySagaStorage()
    container = container if container is not None else di.Container()

    def mapper(saga_map: cqrs.SagaMap) -> None:
        for context_type, saga_type in bindings:
            saga_map.bind(context_type, saga_type)

    mediator = bootstrap(
        di_container=container,
        sagas_mapper=mapper,
        saga_storage=storage,
        sleep=sleep,
        **bootstrap_kwargs,
    )
    return Harness(mediator=mediator, storage=storage, sleep=sleep, container=container)


class Gate:
    """Lets a test know a step is inside ``act`` and keeps it there until released."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def block(self) -> None:
        self.entered.set()
        await self.release.wait()
