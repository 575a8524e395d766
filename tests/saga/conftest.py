"""The storage the engine's behaviour tests run on: memory, then a fresh SQLite file.

Every test here that runs a saga takes the ``storage`` fixture; none is memory-only (time moves through
`saga.helpers.advance` on both, and renewals are counted on both). Tests that run no saga (definitions,
settings, the ticker's arithmetic) take no storage.
"""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import typing

import pytest

from saga.helpers import ClockedMemoryStorage, EngineStorage, sqlite_storage


@pytest.fixture(scope="session")
def empty_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A SQLite database holding the saga tables and nothing else, made once and copied for each test.

    A sync fixture that runs its own event loop, so it resolves outside the test's.
    """
    path = tmp_path_factory.mktemp("saga-schema") / "empty.sqlite3"

    async def create() -> None:
        await (await sqlite_storage(f"sqlite+aiosqlite:///{path}")).close()

    asyncio.run(create())
    return path


@pytest.fixture(params=["memory", "sqlite"])
async def storage(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, empty_sqlite_file: pathlib.Path
) -> typing.AsyncIterator[EngineStorage]:
    """A fresh, empty storage: the memory one (on a `FakeClock`), then SQLite (a file of this test's), closed after.

    The SQLite file starts as a copy of `empty_sqlite_file` (``create_tables`` then finds every table made:
    a tenth of the cost of making them, which is more than most tests take).
    """
    if request.param == "memory":
        store: EngineStorage = ClockedMemoryStorage()
    else:
        path = tmp_path / "sagas.sqlite3"
        shutil.copyfile(empty_sqlite_file, path)
        store = await sqlite_storage(f"sqlite+aiosqlite:///{path}")
    try:
        yield store
    finally:
        await store.close()
