"""The pytest plugin of cqrs-saga (entry point ``pytest11``, extra ``testing``): fixtures for testing sagas.

- ``saga_clock``: a `FakeClock`; ``saga_sleep``: a `FakeSleep` moving it.
- ``saga_harness``: a factory, ``saga_harness(OrderSaga, container=...)``,
  of `SagaHarness` on memory storage sharing that clock and sleep.
- ``sqlite_saga_harness``: the same on a fresh SQLite database file in the
  test's temporary directory (needs ``aiosqlite``); closed after the test.

Disable it with ``-p no:cqrs``.
"""

from __future__ import annotations

import pathlib
import typing

import pytest

from cqrs.testing._clock import FakeClock, FakeSleep
from cqrs.testing._harness import SagaHarness

HarnessFactory = typing.Callable[..., SagaHarness]


@pytest.fixture
def saga_clock() -> FakeClock:
    """A clock that stands still until the test moves it (``saga_clock.advance(seconds)``)."""
    return FakeClock()


@pytest.fixture
def saga_sleep(saga_clock: FakeClock) -> FakeSleep:
    """A sleep that returns at once and moves ``saga_clock``; ``.delays`` lists what was asked for."""
    return FakeSleep(saga_clock)


@pytest.fixture
def saga_harness(saga_clock: FakeClock, saga_sleep: FakeSleep) -> HarnessFactory:
    """Make a `SagaHarness` on memory storage: ``harness = saga_harness(OrderSaga, container=container)``."""

    def make(*sagas: typing.Any, **options: typing.Any) -> SagaHarness:
        options.setdefault("clock", saga_clock)
        options.setdefault("sleep", saga_sleep)
        return SagaHarness(*sagas, **options)

    return make


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the testing extra brings it
    _async_fixtures = False
else:
    _async_fixtures = True

if _async_fixtures:

    @pytest_asyncio.fixture
    async def sqlite_saga_harness(
        tmp_path: pathlib.Path, saga_sleep: FakeSleep
    ) -> typing.AsyncIterator[HarnessFactory]:
        """Make a `SagaHarness` on a fresh SQLite database in ``tmp_path`` (closed after the test)."""
        from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

        made: list[SagaHarness] = []

        def make(*sagas: typing.Any, **options: typing.Any) -> SagaHarness:
            path = tmp_path / f"sagas-{len(made)}.sqlite3"
            options.setdefault("sleep", saga_sleep)
            storage = SqlAlchemySagaStorage.from_url(f"sqlite+aiosqlite:///{path}")
            harness = SagaHarness(*sagas, storage=storage, **options)
            made.append(harness)
            return harness

        try:
            yield make
        finally:
            for harness in made:
                await harness.aclose()
