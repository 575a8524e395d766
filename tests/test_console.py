"""The saga console over HTTP: mounted in FastAPI (ASGI), Flask (werkzeug's dispatcher) and Django (``dispatch`` in
wsgi.py), with plain framework code; listing, search, a saga's page, read-only by default, actions when authorized.
The browser tests (tests/test_console_browser.py) click through the same pages in Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import re
import typing
import uuid

import di
import httpx
import pytest
from fastapi import FastAPI
from tests import ops_sagas
from tests.ops_sagas import ShopContext

from cqrs.config import open_storage
from cqrs.console import ConsoleRequest, SagaConsole, dispatch
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.storage.enums import SagaStatus
from django_project.testing import _django_configured  # noqa: F401


async def seed(url: str) -> dict[str, uuid.UUID]:
    """A completed saga and a compensation_failed one (reserve's compensation broke)."""
    storage = await open_storage(url)
    mediator = SagaMediator(ops_sagas.saga_map, di.Container(), storage=storage)
    try:
        done = await mediator.run(ShopContext(order_id="done"), correlation_id="corr-done")
        ops_sagas.BROKEN.add("ship")
        ops_sagas.BROKEN_COMPENSATIONS.add("reserve")
        stuck = await mediator.run(ShopContext(order_id="stuck"), correlation_id="corr-stuck")
    finally:
        ops_sagas.BROKEN.clear()
        ops_sagas.BROKEN_COMPENSATIONS.clear()
        await storage.close()
    return {"done": done.saga_id, "stuck": stuck.saga_id}


@pytest.fixture
def sagas(sqlite_url: str) -> dict[str, uuid.UUID]:
    return asyncio.run(seed(sqlite_url))


def operators_only(request: ConsoleRequest, action: str) -> bool:
    return request.headers.get("x-role") == "operator"


@contextlib.asynccontextmanager
async def fastapi_client(url: str, **options: typing.Any) -> typing.AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    console = SagaConsole(url, sagas=ops_sagas.sagas, **options)
    app.mount("/ops/sagas", console)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            yield client
    finally:
        await console.aclose()


async def test_fastapi_lists_searches_and_shows_read_only(sqlite_url: str, sagas: dict[str, uuid.UUID]) -> None:
    async with fastapi_client(sqlite_url) as client:
        listed = await client.get("/ops/sagas/")
        assert listed.status_code == 200
        for saga_id in sagas.values():
            assert f'href="/ops/sagas/sagas/{saga_id}"' in listed.text
        failed = await client.get("/ops/sagas/", params={"status": "compensation_failed"})
        assert str(sagas["stuck"]) in failed.text and str(sagas["done"]) not in failed.text
        by_name = await client.get("/ops/sagas/", params={"name": "ShopSaga", "older_than": "0"})
        assert str(sagas["done"]) in by_name.text
        assert "No saga matches" in (await client.get("/ops/sagas/", params={"name": "Nope"})).text
        by_correlation = await client.get("/ops/sagas/", params={"q": "corr-done"})
        assert str(sagas["done"]) in by_correlation.text and str(sagas["stuck"]) not in by_correlation.text
        by_id = await client.get("/ops/sagas/", params={"q": str(sagas["stuck"])}, follow_redirects=False)
        assert by_id.status_code == 303 and by_id.headers["location"] == f"/ops/sagas/sagas/{sagas['stuck']}"
        missing = await client.get("/ops/sagas/", params={"q": str(uuid.uuid4())})
        assert missing.status_code == 404 and "No saga with id" in missing.text

        page = await client.get(f"/ops/sagas/sagas/{sagas['stuck']}")
        assert page.status_code == 200
        for text in ("compensation_failed", "StepFailed: ship is broken", "compensation of reserve is broken",
                     '<pre class="mermaid" id="diagram">flowchart LR', "Step timeline", "&quot;order_id&quot;: "
                     "&quot;stuck&quot;", "Read-only", '/ops/sagas/static/mermaid.min.js'):
            assert text in page.text, text
        assert "<form method=\"post\"" not in page.text
        refused = await client.post(f"/ops/sagas/sagas/{sagas['stuck']}/actions/resolve", data={"note": "x"})
        assert refused.status_code == 403
        script = await client.get("/ops/sagas/static/mermaid.min.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert len(script.content) > 1_000_000
        assert (await client.get("/ops/sagas/static/../../etc/passwd")).status_code == 404
        assert (await client.get(f"/ops/sagas/sagas/{uuid.uuid4()}")).status_code == 404


async def test_fastapi_actions_behind_the_hook(sqlite_url: str, sagas: dict[str, uuid.UUID]) -> None:
    async with fastapi_client(sqlite_url, authorize=operators_only, actor=lambda r: "carol") as client:
        operator = {"x-role": "operator"}
        assert "Read-only" in (await client.get(f"/ops/sagas/sagas/{sagas['stuck']}")).text
        page = await client.get(f"/ops/sagas/sagas/{sagas['stuck']}", headers=operator)
        assert 'data-action="resolve"' in page.text and 'value="reserve"' in page.text  # skip's default step
        assert re.search(r"<button disabled title=\"[^\"]*only a failed or parked saga", page.text)
        url = f"/ops/sagas/sagas/{sagas['stuck']}/actions/resolve"
        assert (await client.post(url, data={"note": "x"})).status_code == 403
        cross = await client.post(url, data={"note": "x"}, headers={**operator, "origin": "http://evil.example"})
        assert cross.status_code == 403
        refused = await client.post(url, data={"note": " "}, headers=operator)
        assert refused.status_code == 409 and "a note is required" in refused.text
        done = await client.post(url, data={"note": "refunded by hand"}, headers=operator, follow_redirects=False)
        assert done.status_code == 303
        page = await client.get(done.headers["location"], headers=operator)
        assert "is resolved by hand (reserve) and failed" in page.text
        assert "compensated by hand, resolved by carol: refunded by hand" in page.text
        assert 'class="status status-failed"' in page.text


def test_flask_mounts_the_wsgi_console(sqlite_url: str, sagas: dict[str, uuid.UUID]) -> None:
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    app = Flask(__name__)
    console = SagaConsole(sqlite_url, sagas=ops_sagas.sagas, authorize=lambda request, action: True).wsgi()
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/sagas": console})  # type: ignore[method-assign]
    try:
        client = app.test_client()
        listed = client.get("/sagas/")
        assert listed.status_code == 200 and f"/sagas/sagas/{sagas['done']}" in listed.text
        acted = client.post(f"/sagas/sagas/{sagas['stuck']}/actions/skip", data={"step": "reserve", "note": "n/a"})
        assert acted.status_code == 303
        page = client.get(acted.headers["location"])
        assert "it was the last one outstanding" in page.text and "skipped by console: n/a" in page.text
    finally:
        console.close()


def test_django_reaches_the_console_through_its_wsgi_application(
    django_configured: None, sqlite_url: str, sagas: dict[str, uuid.UUID]
) -> None:
    from django.core.wsgi import get_wsgi_application
    from werkzeug.test import Client

    console = SagaConsole(sqlite_url, sagas=ops_sagas.sagas).wsgi()
    application = dispatch(get_wsgi_application(), {"/sagas": console})  # what wsgi.py says
    try:
        client = Client(application)
        page = client.get(f"/sagas/sagas/{sagas['done']}")
        assert page.status_code == 200 and "completed" in page.text and "/sagas/static/console.css" in page.text
        assert client.get("/sagas").status_code == 200
        assert client.get("/no-such-django-page/").status_code == 404  # Django's own answer
    finally:
        console.close()


async def test_a_storage_given_without_definitions_still_draws_the_history(sqlite_url: str) -> None:
    ids = await seed(sqlite_url)
    storage = await open_storage(sqlite_url, create_tables=False)
    try:
        console = SagaConsole(storage)
        request = ConsoleRequest("GET", f"/sagas/{ids['stuck']}", "", {}, {}, {}, {})
        response = await console.handle(request)
        body = response.body.decode()
        assert response.status == 200 and "flowchart LR" in body and "compensate failed" in body
        assert (await storage.get_saga(ids["stuck"])) is not None
        record = await storage.get_saga(ids["stuck"])
        assert record is not None and record.status == SagaStatus.COMPENSATION_FAILED
    finally:
        await storage.close()

