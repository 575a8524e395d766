"""Sync and async view helpers, the correlation-id middleware (sync and async modes), settings errors."""

from __future__ import annotations

import asyncio
import logging
import typing
import uuid

import pytest

from cqrs.saga.storage.enums import SagaStatus
from django_project.testing import (
    Database,
    _django_configured,  # noqa: F401
    _saga_db,  # noqa: F401
    record,
)

JSON = "application/json"


@pytest.fixture
def log_records() -> list[logging.LogRecord]:
    from django_project.logs import RecordingHandler

    RecordingHandler.records.clear()
    return RecordingHandler.records


# -- sync views -------------------------------------------------------------------------------------


def test_sync_view_runs_a_saga_and_waits_for_its_outcome(
    saga_db: Database, client: typing.Any, log_records: list[logging.LogRecord]
) -> None:
    response = client.post("/t/run/", {"text": "hello"}, content_type=JSON, headers={"X-Correlation-ID": "trace-1"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "completed"
    assert body["responses"] == [
        {"text": "HELLO", "correlation_id": "trace-1"},
        {"text": "ok", "correlation_id": "trace-1"},
    ]
    assert response["X-Correlation-ID"] == "trace-1"
    stored = record(body["saga_id"])
    assert stored.status == SagaStatus.COMPLETED
    assert stored.correlation_id == "trace-1"
    # The step's log record (written on the saga loop's thread) carries the request's id and the saga's.
    assert [(r.getMessage(), r.correlation_id, r.saga_id) for r in log_records] == [
        ("echo hello", "trace-1", body["saga_id"])
    ]


def test_sync_views_share_one_saga_loop_and_make_none_per_request(
    saga_db: Database, client: typing.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cqrs.integrations._loop import shared_loop_thread

    assert client.post("/t/run/", {"text": "warm"}, content_type=JSON).json()["status"] == "completed"
    loop = shared_loop_thread().loop

    def no_new_loops(*args: typing.Any, **kwargs: typing.Any) -> typing.NoReturn:
        raise AssertionError("an event loop was made for a request")

    with monkeypatch.context() as patched:
        patched.setattr(asyncio, "new_event_loop", no_new_loops)
        patched.setattr(asyncio, "run", no_new_loops)
        for number in range(3):
            response = client.post("/t/run/", {"text": f"r{number}"}, content_type=JSON)
            assert response.json()["status"] == "completed", response.content
    assert shared_loop_thread().loop is loop


def test_sync_view_reports_a_failed_saga(saga_db: Database, client: typing.Any) -> None:
    response = client.post("/t/run/", {"text": "no", "fail": True}, content_type=JSON)
    body = response.json()
    assert body["status"] == "failed"
    assert "refusing 'no'" in body["error"]
    assert record(body["saga_id"]).status == SagaStatus.FAILED


@pytest.mark.parametrize("saga_db", ["sqlite"], indirect=True)  # the example's test covers both
@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"fail": true}', "text"),
        (b'{"text": ["a"]}', "text"),
    ],
)
def test_helpers_answer_bad_bodies_with_problems(
    saga_db: Database, client: typing.Any, payload: bytes, needle: str
) -> None:
    from django.db import connection

    response = client.post("/t/run/", payload, content_type=JSON)
    assert response.status_code == (422 if needle == "text" else 400)
    assert response["Content-Type"] == "application/problem+json"
    assert needle in response.json()["detail"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM saga_executions")
        assert cursor.fetchone()[0] == 0


def test_start_saga_returns_at_once_and_the_run_finishes(saga_db: Database, client: typing.Any) -> None:
    from cqrs.integrations.django import wait_for_sagas

    response = client.post("/t/start/?text=later", headers={"X-Correlation-ID": "bg-1"})
    assert response.status_code == 202
    saga_id = response.json()["saga_id"]
    assert wait_for_sagas(timeout=30)
    stored = record(saga_id)
    assert stored.status == SagaStatus.COMPLETED
    assert stored.context["echoed"] == "LATER"
    assert stored.correlation_id == "bg-1"


# -- async views ------------------------------------------------------------------------------------


async def test_async_view_awaits_a_saga(saga_db: Database, async_client: typing.Any) -> None:
    response = await async_client.post(
        "/t/arun/", {"text": "async"}, content_type=JSON, headers={"X-Correlation-ID": "atrace"}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "completed"
    assert body["responses"][0] == {"text": "ASYNC", "correlation_id": "atrace"}
    assert response["X-Correlation-ID"] == "atrace"


async def test_async_views_start_sagas_and_read_status_and_diagrams(
    saga_db: Database, async_client: typing.Any
) -> None:
    from cqrs.integrations.django import wait_for_sagas

    response = await async_client.post("/t/astart/?text=bg")
    assert response.status_code == 202
    saga_id = response.json()["saga_id"]
    assert await asyncio.to_thread(wait_for_sagas, 30)

    status = (await async_client.get(f"/t/astatus/{saga_id}/")).json()
    assert status["status"] == "completed"
    assert [step["step"] for step in status["completed_steps"]] == ["echo", "check"]
    diagram = (await async_client.get(f"/t/adiagram/{saga_id}/")).json()["diagram"]
    assert "echo" in diagram and "check" in diagram

    missing = await async_client.get(f"/t/astatus/{uuid.uuid4()}/")
    assert missing.status_code == 404
    malformed = await async_client.get("/t/astatus/not-a-uuid/")
    assert malformed.status_code == 422
    assert "not a saga id" in malformed.json()["detail"]


async def test_blocking_helpers_refuse_to_run_inside_an_event_loop(saga_db: Database) -> None:
    from django.core.exceptions import SynchronousOnlyOperation

    from cqrs.integrations.django import run_saga, saga_status, start_saga
    from django_project.sagas import EchoContext

    with pytest.raises(SynchronousOnlyOperation, match="arun_saga"):
        run_saga(EchoContext(text="x"))
    with pytest.raises(SynchronousOnlyOperation):
        start_saga(EchoContext(text="x"))
    with pytest.raises(SynchronousOnlyOperation):
        saga_status(uuid.uuid4())


async def test_arun_saga_keeps_running_when_the_view_is_cancelled(saga_db: Database) -> None:
    from cqrs.integrations.django import arun_saga, wait_for_sagas
    from django_project.sagas import SlowContext

    saga_id = uuid.uuid4()
    task = asyncio.ensure_future(arun_saga(SlowContext(seconds=0.3), saga_id=saga_id))
    # Cancel the view once its saga is stored (it is then napping in its only step).
    for _ in range(200):
        if await asyncio.to_thread(record, saga_id) is not None:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(wait_for_sagas, 10)

    def completed() -> bool:
        stored = record(saga_id)
        return stored is not None and stored.status == SagaStatus.COMPLETED

    for _ in range(100):
        if await asyncio.to_thread(completed):
            break
        await asyncio.sleep(0.05)
    assert await asyncio.to_thread(completed)


# -- the middleware -----------------------------------------------------------------------------------


def test_middleware_uses_a_sane_incoming_id_in_sync_mode(
    saga_db: Database, client: typing.Any, log_records: list[logging.LogRecord]
) -> None:
    response = client.get("/t/whoami/", headers={"X-Correlation-ID": "req-42"})
    assert response.json() == {"current": "req-42", "request": "req-42"}
    assert response["X-Correlation-ID"] == "req-42"
    assert [(r.getMessage(), r.correlation_id) for r in log_records] == [("whoami (sync)", "req-42")]

    from cqrs.correlation import get_correlation_id

    assert get_correlation_id() is None  # reset after the request


@pytest.mark.parametrize("saga_db", ["sqlite"], indirect=True)  # no database work: one backend is enough
@pytest.mark.parametrize("incoming", [None, "", "bad id\r\nSet-Cookie: x=1", "x" * 129])
def test_middleware_replaces_a_missing_or_unfit_id(saga_db: Database, client: typing.Any, incoming: str | None) -> None:
    headers = {"X-Correlation-ID": incoming} if incoming is not None else {}
    response = client.get("/t/whoami/", headers=headers)
    generated = response["X-Correlation-ID"]
    assert generated != incoming
    assert len(generated) == 32 and all(c in "0123456789abcdef" for c in generated)
    assert response.json() == {"current": generated, "request": generated}


async def test_middleware_in_async_mode(
    saga_db: Database, async_client: typing.Any, log_records: list[logging.LogRecord]
) -> None:
    response = await async_client.get("/t/awhoami/", headers={"X-Correlation-ID": "async-7"})
    assert response.json() == {"current": "async-7", "request": "async-7"}
    assert response["X-Correlation-ID"] == "async-7"
    assert [(r.getMessage(), r.correlation_id) for r in log_records] == [("whoami (async)", "async-7")]


def test_middleware_is_sync_and_async_capable(django_configured: None) -> None:
    from asgiref.sync import iscoroutinefunction
    from django.http import HttpResponse

    from cqrs.integrations.django import CorrelationIdMiddleware

    async def async_view(request: typing.Any) -> HttpResponse:
        return HttpResponse()

    assert CorrelationIdMiddleware.sync_capable and CorrelationIdMiddleware.async_capable
    assert iscoroutinefunction(CorrelationIdMiddleware(async_view))
    assert not iscoroutinefunction(CorrelationIdMiddleware(lambda request: HttpResponse()))


def test_middleware_reads_the_configured_header(saga_db: Database, settings: typing.Any) -> None:
    from django.test import Client

    settings.CQRS_SAGA = {**settings.CQRS_SAGA, "CORRELATION_HEADER": "X-Request-ID"}
    response = Client().get("/t/whoami/", headers={"X-Request-ID": "rid-1", "X-Correlation-ID": "ignored"})
    assert response.json()["current"] == "rid-1"
    assert response["X-Request-ID"] == "rid-1"
    assert "X-Correlation-ID" not in response


# -- settings ------------------------------------------------------------------------------------------


def test_the_app_configures_cqrs_from_settings(saga_db: Database) -> None:
    from cqrs.config import get_config
    from cqrs.integrations.django import get_saga_config

    config = get_saga_config()
    assert get_config().sagas == config.sagas  # the storage URL is derived from the database when used
    assert [s.name for s in config.saga_map.sagas()] == ["order", "EchoSaga", "SlowSaga", "StubbornSaga"]
    assert config.compensation_retry_count == 2
    assert config.lease_seconds == 5
    assert config.create_tables is False  # the migration made them
    expected = "sqlite+aiosqlite:///" if saga_db.vendor == "sqlite" else "postgresql+asyncpg://"
    assert config.storage_url.startswith(expected)


def test_a_saga_setting_that_is_no_dict_is_named(django_configured: None) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from cqrs.integrations.django._settings import load

    with pytest.raises(ImproperlyConfigured, match="CQRS_SAGA must be a dict, got list"):
        load([])


def test_invalid_settings_fail_checks_and_helpers(saga_db: Database, settings: typing.Any, client: typing.Any) -> None:
    from django.core import checks
    from django.core.exceptions import ImproperlyConfigured

    from cqrs.integrations.django import run_saga
    from django_project.sagas import EchoContext

    settings.CQRS_SAGA = {**settings.CQRS_SAGA, "STORAGE_URLL": "sqlite:///x.db"}
    errors = [e for e in checks.run_checks() if e.id == "cqrs_saga.E001"]
    assert len(errors) == 1
    assert "STORAGE_URLL" in errors[0].msg
    assert "did you mean STORAGE_URL?" in errors[0].msg
    with pytest.raises(ImproperlyConfigured, match="Unknown key"):
        run_saga(EchoContext(text="x"))
    # The middleware still works, with the default header.
    assert client.get("/t/whoami/", headers={"X-Correlation-ID": "still"}).json()["current"] == "still"


@pytest.mark.parametrize("saga_db", ["sqlite"], indirect=True)  # no database work: one backend is enough
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"SAGAS": ["django_project.sagas.Nope"]}, r"SAGAS'\]\[0\] is 'django_project.sagas.Nope', which cannot"),
        ({"SAGAS": ["django_project.sagas.EchoContext"]}, "not a Saga subclass"),
        ({"SAGAS": "orders.sagas.OrderSaga"}, "must be a list of dotted paths"),
        ({"CONTAINER": "django_project.sagas.EchoContext"}, r"CONTAINER'\]"),
        ({"COMPENSATION_RETRY_COUNT": "many"}, "COMPENSATION_RETRY_COUNT must be a whole number"),
        ({"LEASE_SECONDS": [1]}, "LEASE_SECONDS must be a positive number"),
        ({"RECOVERY": "sometimes"}, "RECOVERY must be true or false"),
        ({"MAX_BODY_BYTES": 0}, "MAX_BODY_BYTES must be a whole number of bytes"),
        ({"CORELATION_HEADER": "X"}, r"CQRS_SAGA\['CORELATION_HEADER'\]; did you mean CORRELATION_HEADER\?"),
        ({"DATABASE": "other"}, "not in DATABASES"),
    ],
)
def test_settings_errors_name_the_setting(
    saga_db: Database, settings: typing.Any, overrides: dict[str, typing.Any], message: str
) -> None:
    from cqrs.integrations.django import _runtime

    settings.CQRS_SAGA = {**settings.CQRS_SAGA, **overrides}
    runtime = _runtime.current()
    assert runtime.error is not None
    import re

    assert re.search(message, str(runtime.error)), str(runtime.error)


def test_storage_url_is_derived_from_the_django_database(django_configured: None) -> None:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    from cqrs.integrations.django import _settings
    from django_project.testing import point_django_at

    saved = settings.DATABASES["default"]
    try:
        point_django_at({"ENGINE": "django.db.backends.sqlite3", "NAME": "relative.sqlite3"})
        url = _settings.storage_url_for_database("default")
        assert url.startswith("sqlite+aiosqlite:////") and url.endswith("/relative.sqlite3")
        point_django_at({
            "ENGINE": "django.db.backends.postgresql", "NAME": "shop", "USER": "app", "PASSWORD": "p@ss:word",
            "HOST": "db.internal", "PORT": "6543", "OPTIONS": {"sslmode": "require"},
        })
        url = _settings.storage_url_for_database("default")
        assert url == "postgresql+asyncpg://app:p%40ss%3Aword@db.internal:6543/shop?ssl=require"
        assert _settings.redact(url) == "postgresql+asyncpg://app:***@db.internal:6543/shop?ssl=require"
        assert _settings.same_database(url, "postgresql://app@db.internal:6543/shop")
        assert not _settings.same_database(url, "postgresql://app@db.internal:6543/other")
        point_django_at({"ENGINE": "django.db.backends.postgresql", "NAME": "shop"})
        assert _settings.storage_url_for_database("default") == "postgresql+asyncpg:///shop"
        point_django_at({"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"})
        with pytest.raises(ImproperlyConfigured, match="in-memory SQLite"):
            _settings.storage_url_for_database("default")
        point_django_at({"ENGINE": "django.db.backends.mysql", "NAME": "shop"})
        with pytest.raises(ImproperlyConfigured, match="set CQRS_SAGA\\['STORAGE_URL'\\]"):
            _settings.storage_url_for_database("default")
    finally:
        point_django_at(saved)


def test_import_error_names_the_extra_when_django_is_missing() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['django'] = None\n"
        "try:\n    import cqrs.integrations.django\n"
        "except ImportError as error:\n    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'cqrs-saga[django]'" in out.stdout, out.stdout + out.stderr


# -- the public surface ------------------------------------------------------------------------------

DJANGO_PUBLIC = {
    "CorrelationIdMiddleware", "OperatorAction", "Problem", "SagaResult", "SagaStillRunning", "alist_sagas",
    "arun_saga", "asaga_diagram", "asaga_history", "asaga_status", "astart_saga", "atomic_saga_start",
    "get_saga_config", "list_sagas", "operator_routes", "problem_response", "read_json", "read_saga_context",
    "run_saga", "saga_diagram", "saga_event_stream", "saga_history", "saga_status", "setup", "shutdown",
    "start_saga", "start_saga_on_commit", "wait_for_sagas",
}


def test_the_django_integration_exports_exactly_its_public_names(django_configured: None) -> None:
    from cqrs.integrations import django as saga_django

    assert set(saga_django.__all__) == DJANGO_PUBLIC
    for name in saga_django.__all__:
        assert getattr(saga_django, name).__doc__, f"cqrs.integrations.django.{name} has no docstring"
