"""Shared fixtures: real databases, isolated per test."""

from __future__ import annotations

import os
import socket
import typing
import uuid

import pytest

PG_HOST = os.environ.get("CQRS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("CQRS_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("CQRS_TEST_PG_USER", "postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip locally, fail in CI, when a service the test needs is not running."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI must run every {name} test; .ci/run starts it)")
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> typing.Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (dropped afterwards), as an asyncpg URL."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    import asyncio

    import asyncpg

    name = f"cqrs_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: typing.Any) -> str:
    """A fresh SQLite database file for this test, as an aiosqlite URL."""
    return f"sqlite+aiosqlite:///{tmp_path / 'sagas.sqlite3'}"


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest) -> str:
    """Each storage's URL in turn: ``memory://``, a fresh SQLite file, a fresh PostgreSQL database.

    A sync fixture, so the database fixtures (which run their own event loop) resolve
    outside the test's. Parametrize it indirectly with a subset of the three names.
    """
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue(f"{request.param}_url"))
