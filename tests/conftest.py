"""Shared fixtures: real databases, isolated per test."""

from __future__ import annotations

import os
import socket
import typing
import uuid

import pytest

import group_commit_switch

group_commit_switch.install()

PG_HOST = os.environ.get("CQRS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("CQRS_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("CQRS_TEST_PG_USER", "postgres")
MARIADB_HOST = os.environ.get("CQRS_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("CQRS_TEST_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("CQRS_TEST_MARIADB_USER", "root")
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
def mariadb_url() -> typing.Iterator[str]:
    """A fresh, empty MariaDB (or MySQL) database for this test (dropped afterwards), as an asyncmy URL."""
    require_service("MariaDB", MARIADB_HOST, MARIADB_PORT)
    import asyncio

    import asyncmy

    name = f"cqrs_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncmy.connect(host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER)
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(sql)
        finally:
            await conn.ensure_closed()

    asyncio.run(admin(f"CREATE DATABASE `{name}`"))
    try:
        yield f"mysql+asyncmy://{MARIADB_USER}@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS `{name}`"))


@pytest.fixture
def sqlite_url(tmp_path: typing.Any) -> str:
    """A fresh SQLite database file for this test, as an aiosqlite URL."""
    return f"sqlite+aiosqlite:///{tmp_path / 'sagas.sqlite3'}"


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-group-commit", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def storage_url(request: pytest.FixtureRequest) -> str:
    """Each storage's URL in turn: ``memory://``, a fresh SQLite file, a fresh PostgreSQL database (also with
    group commit: see `group_commit_switch`), a fresh MariaDB database.

    A sync fixture, so the database fixtures (which run their own event loop) resolve
    outside the test's. Parametrize it indirectly with a subset of the four names.
    """
    if request.param == "memory":
        return "memory://"
    return database_url(request, request.param)


def database_url(request: pytest.FixtureRequest, name: str) -> str:
    """The fresh database ``name`` (``sqlite``, ``postgres``, ``mariadb``), or ``postgres-group-commit``: a
    PostgreSQL one whose storages use group commit in this test and the processes it starts."""
    if name == "postgres-group-commit":
        request.getfixturevalue("monkeypatch").setenv(group_commit_switch.ENV, "1")
        name = "postgres"
    return str(request.getfixturevalue(f"{name}_url"))


@pytest.fixture(
    params=[
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("nats", marks=pytest.mark.nats),
    ]
)
async def broker_kit(request: pytest.FixtureRequest) -> typing.AsyncIterator[typing.Any]:
    """Each real broker in turn (RabbitMQ, Redis Streams, NATS JetStream) as a `broker_kits.Kit`: names of this
    test's own, created, and deleted afterwards. Skips locally, fails in CI, when the broker is not running."""
    from broker_kits import KITS

    kit = KITS[request.param]()
    await kit.setup()
    try:
        yield kit
    finally:
        await kit.cleanup()


def _plugin_installed() -> bool:
    """Whether pytest loads `cqrs.testing.plugin` through the installed package's ``pytest11`` entry point."""
    from importlib.metadata import entry_points

    return any(ep.value == "cqrs.testing.plugin" for ep in entry_points(group="pytest11"))


# Our own tests use the plugin users get; an install made before it existed lacks the entry point.
PLUGIN_ARGS: list[str] = [] if _plugin_installed() else ["-p", "cqrs.testing.plugin"]
pytest_plugins = [] if _plugin_installed() else ["cqrs.testing.plugin"]
