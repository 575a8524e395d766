"""The saga console in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright clicks
list -> saga -> action, on a console mounted in FastAPI and served by uvicorn. Screenshots are kept in
``tests/artifacts/console/`` (gitignored; CI keeps them with the run)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import socket
import threading
import typing
import uuid

import pytest
import uvicorn
from fastapi import FastAPI
from tests import ops_sagas
from tests.conftest import IN_CI
from tests.test_console import seed

from cqrs.console import ConsoleRequest, SagaConsole

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = pathlib.Path(__file__).parent / "artifacts" / "console"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> typing.Iterator[typing.Any]:
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield launched
        launched.close()


@contextlib.contextmanager
def serving(url: str) -> typing.Iterator[str]:
    """The console (actions for requests with ``x-role: operator``) in FastAPI, served by uvicorn in a thread."""

    def may(request: ConsoleRequest, action: str) -> bool:
        return request.headers.get("x-role") == "operator"

    app = FastAPI()
    console = SagaConsole(url, sagas=ops_sagas.sagas, authorize=may, actor=lambda request: "dana")
    app.mount("/sagas", console)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections queue until uvicorn serves: no wait for it to start
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            await console.aclose()  # the storage it opened lives in this loop

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/sagas"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def shot(page: typing.Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def seeded(url: str) -> dict[str, uuid.UUID]:
    """`seed` in a thread of its own (Playwright's sync API runs an event loop in this one)."""
    found: dict[str, uuid.UUID] = {}
    thread = threading.Thread(target=lambda: found.update(asyncio.run(seed(url))))
    thread.start()
    thread.join(60)
    return found


def test_click_list_then_saga_then_resolve(browser: typing.Any, sqlite_url: str) -> None:
    ids = seeded(sqlite_url)
    with serving(sqlite_url) as base:
        reader = browser.new_page()
        reader.goto(f"{base}/sagas/{ids['stuck']}")
        assert reader.locator("p.read-only").is_visible()  # read-only by default
        reader.close()

        context = browser.new_context(
            extra_http_headers={"x-role": "operator"}, viewport={"width": 1200, "height": 900}
        )
        page = context.new_page()
        page.goto(f"{base}/")
        assert page.locator("table.sagas tbody tr").count() == 2
        shot(page, "1-list")
        page.select_option("select[name=status]", "compensation_failed")
        page.click("form.filters button[type=submit]")
        assert page.locator("table.sagas tbody tr").count() == 1
        page.click(f"a.saga-link:text('{ids['stuck']}')")
        page.wait_for_selector("body[data-diagram]")
        assert page.get_attribute("body", "data-diagram") == "drawn"
        assert page.locator("#diagram svg").count() == 1  # Mermaid drew the run, from the shipped mermaid.js
        assert page.locator(".status").first.inner_text() == "compensation_failed"
        shot(page, "2-saga")

        form = page.locator("form:has(button[data-action=resolve])")
        form.locator("input[name=note]").fill("refunded by hand, ticket 7")
        form.locator("button").click()
        page.wait_for_selector("p.notice")
        assert "resolved by hand (reserve) and failed" in page.locator("p.notice").inner_text()
        assert page.locator(".status").first.inner_text() == "failed"
        assert "resolved by dana: refunded by hand, ticket 7" in page.locator("table.timeline").inner_text()
        shot(page, "3-resolved")

        page.goto(f"{base}/?q=corr-done")
        page.click("a.saga-link")
        assert page.locator("button[data-action=park]").count() == 0  # completed: park is not offered
        assert page.locator("button[disabled]:text('Park')").count() == 1
        shot(page, "4-completed")
        context.close()
    assert {"1-list.png", "2-saga.png", "3-resolved.png", "4-completed.png"} <= {p.name for p in ARTIFACTS.glob("*")}
