"""Shared pieces for the saga engine behaviour tests (tests/saga/).

The behaviour tests run on memory and SQLite storage: they take the ``storage``
fixture (tests/saga/conftest.py) and build their mediator with
``make_harness(..., storage=storage)``. Nothing here sleeps: waits go through
`FakeSleep`, which records the delays it is asked for, and storage time moves
only through `advance` (the memory storage's `FakeClock`; on SQLite, every
stored timestamp is shifted back, which is the same to a storage that reads the
database clock).
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
from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

Result = SagaStepResult[typing.Any, typing.Any]
#: The storages the engine's behaviour tests run on.
EngineStorage = MemorySagaStorage | SqlAlchemySagaStorage


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


class ClockedMemoryStorage(MemorySagaStorage):
    """The memory storage on a `FakeClock` (``clock``), which `advance` moves."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        super().__init__(clock=self.clock)


async def sqlite_storage(url: str) -> SqlAlchemySagaStorage:
    """A SQLite storage on ``url`` with its tables created (the caller closes it)."""
    storage = SqlAlchemySagaStorage.from_url(url)
    await storage.create_tables()
    return storage


async def advance(storage: EngineStorage, seconds: float) -> None:
    """Let ``seconds`` pass as far as ``storage`` can tell (lease expiry, ages)."""
    if isinstance(storage, ClockedMemoryStorage):
        storage.clock.advance(seconds)
        return
    if not (isinstance(storage, SqlAlchemySagaStorage) and storage.engine.dialect.name == "sqlite"):
        raise TypeError(f"advance() moves the time of a ClockedMemoryStorage or a SQLite storage, not {storage!r}")

    def shift(column: str) -> str:
        return f"strftime('%Y-%m-%d %H:%M:%f', {column}, '{-seconds:+.3f} seconds')"

    async with storage.engine.begin() as conn:
        columns = ", ".join(f"{c} = {shift(c)}" for c in ("created_at", "updated_at", "lease_expires_at"))
        await conn.exec_driver_sql(f"UPDATE saga_executions SET {columns}")
        await conn.exec_driver_sql(f"UPDATE saga_log SET created_at = {shift('created_at')}")


@dataclasses.dataclass
class Harness:
    """A mediator with the storage, fake sleep and container it was built from."""

    mediator: SagaMediator
    storage: EngineStorage
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
    storage: EngineStorage,
    container: typing.Any = None,
    **bootstrap_kwargs: typing.Any,
) -> Harness:
    """Bootstrap a mediator on ``storage`` for ``(context_type, saga_type)`` bindings with a fake sleep.

    ``storage`` is the test's ``storage`` fixture (memory, then SQLite), or a
    memory storage for a test that says why it runs on memory only.
    """
    sleep = FakeSleep()
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
