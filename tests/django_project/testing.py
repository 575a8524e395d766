"""Fixtures and helpers of the Django tests.

Django is configured (``settings.configure`` from `django_project.settings`)
by the session fixture ``django_configured``, the first time a Django test
asks for it: the rest of the suite runs without Django set up. ``saga_db``
points Django's ``DATABASES["default"]`` at a fresh database per test, SQLite
(a file in tmp_path) or PostgreSQL (the ``postgres_url`` fixture), migrates it
(the saga tables come from the saga app's migration) and re-reads
``CQRS_SAGA``, so the sagas live in that same database.

Test modules import the fixtures they use: ``from django_project.testing import ...``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import pathlib
import signal
import subprocess
import sys
import time
import typing
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
EXAMPLE = ROOT / "examples" / "django_app"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session", name="django_configured")
def _django_configured() -> None:
    from django.conf import settings

    if not settings.configured:
        module = importlib.import_module("django_project.settings")
        settings.configure(**{name: getattr(module, name) for name in dir(module) if name.isupper()})
    import django

    django.setup()


@dataclasses.dataclass
class Database:
    """The database of one test, as Django, subprocesses and SQL see it."""

    vendor: str
    url: str  # DATABASE_URL for the example, CQRS_DJANGO_TEST_DATABASE_URL for the test project
    django: dict[str, typing.Any]

    def env(self, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
        env.update(
            DATABASE_URL=self.url,
            CQRS_DJANGO_TEST_DATABASE_URL=self.url,
            PYTHONUNBUFFERED="1",
            DJANGO_ALLOWED_HOSTS="testserver,localhost,127.0.0.1",
            **extra,
        )
        return env


def point_django_at(entry: dict[str, typing.Any]) -> None:
    """Make ``entry`` Django's ``DATABASES["default"]``, closing the connections to the previous one."""
    from asgiref.local import Local
    from django.conf import settings
    from django.db import connections

    connections.close_all()
    settings.DATABASES = {"default": entry}
    connections._settings = None
    connections.__dict__.pop("settings", None)
    connections._connections = Local(connections.thread_critical)


@pytest.fixture(params=BACKENDS, name="saga_db")
def _saga_db(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, django_configured: None
) -> typing.Iterator[Database]:
    from config.settings import database_from_url
    from django.core.management import call_command
    from django.db import connections

    from cqrs.integrations import django as saga_django

    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    database = Database(request.param, url, database_from_url(url))
    # pytest-django blocks Django's database access only when Django was set up before the
    # session started (not so here: its blocker fixture is None then); unblock it if it is there.
    blocker = request.getfixturevalue("django_db_blocker")
    with blocker.unblock() if blocker is not None else contextlib.nullcontext():
        point_django_at(database.django)
        saga_django.setup()
        call_command("migrate", verbosity=0, interactive=False)
        try:
            yield database
        finally:
            saga_django.shutdown(timeout=10)
            connections.close_all()


# -- reading what is stored --------------------------------------------------------------------


def on_saga_loop(make: typing.Callable[[typing.Any], typing.Awaitable[typing.Any]]) -> typing.Any:
    """Run ``make(storage)`` on the saga loop with the runtime's open storage (sync tests)."""
    from cqrs.integrations._loop import block
    from cqrs.integrations.django import _runtime

    runtime = _runtime.current_runtime()

    async def go() -> typing.Any:
        mediator = await runtime.open()
        return await make(mediator.storage)

    return block(go())


def record(saga_id: uuid.UUID | str) -> typing.Any:
    return on_saga_loop(lambda storage: storage.get_saga(uuid.UUID(str(saga_id))))


def history(saga_id: uuid.UUID | str) -> list[typing.Any]:
    found = on_saga_loop(lambda storage: storage.get_step_history(uuid.UUID(str(saga_id))))
    return typing.cast(list[typing.Any], found)


def age_saga(saga_id: uuid.UUID, seconds: float) -> None:
    """Move a saga's creation and last update ``seconds`` into the past (rather than wait that long)."""
    import datetime

    import sqlalchemy as sa

    from cqrs.saga.storage.sqlalchemy import saga_executions

    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)

    async def go(storage: typing.Any) -> None:
        async with storage.engine.begin() as conn:
            await conn.execute(
                sa.update(saga_executions)
                .where(saga_executions.c.id == saga_id)
                .values(created_at=past, updated_at=past)
            )

    on_saga_loop(go)


def count_rows(table: str) -> int:
    """Rows of ``table``, read through Django's connection."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        return int(cursor.fetchone()[0])


def wait_for(predicate: typing.Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


# -- subprocesses --------------------------------------------------------------------------------


def example_manage(database: Database, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python examples/django_app/manage.py ARGS`` with ``DATABASE_URL`` set to the test's database."""
    return subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), *args],
        cwd=EXAMPLE, env=database.env(), capture_output=True, text=True, timeout=timeout,
    )


def project_command(*args: str) -> list[str]:
    """The command line of ``django-admin ARGS`` for the test project (its sagas, the test's database)."""
    return [sys.executable, "-m", "django", *args, "--settings", "django_project.settings", "--pythonpath", str(TESTS)]


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise
