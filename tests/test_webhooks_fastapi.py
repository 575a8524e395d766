"""Webhooks on FastAPI: `webhook_router` over memory, SQLite and PostgreSQL storages.

Requests go through httpx's ASGITransport; the concurrent deliveries are
``asyncio.gather``-ed, so they interleave at every await (and, on PostgreSQL,
run on separate pool connections). Background runs are awaited with the
app's `BackgroundRunner.wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import typing

import di
import httpx
import pytest
from fastapi import FastAPI

from cqrs.config import SagaConfig
from cqrs.integrations import fastapi as saga_api
from cqrs.integrations.webhooks import SignatureVerifier
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.protocol import SagaStorage
from cqrs.triggers import derive_saga_id
from django_project import webhook_sagas
from django_project.webhook_sagas import SAGAS

VERIFIER = webhook_sagas.VERIFIER


@dataclasses.dataclass
class Served:
    app: FastAPI
    client: httpx.AsyncClient
    runtime: saga_api.SagaRuntime

    @property
    def storage(self) -> SagaStorage:
        return self.runtime.config.require_storage()

    async def deliver(self, source: str, event: typing.Any, *, sign: bool = True, **headers: str) -> httpx.Response:
        raw = event if isinstance(event, bytes) else json.dumps(event).encode()
        signed = VERIFIER.headers(raw) if sign else {}
        return await self.client.post(
            f"/webhooks/{source}", content=raw, headers={"Content-Type": "application/json", **signed, **headers}
        )

    async def settle(self) -> None:
        await self.runtime.runner.wait(timeout=30)
        assert self.runtime.runner.pending == 0


@pytest.fixture(autouse=True)
def _reset() -> None:
    webhook_sagas.reset()



@contextlib.asynccontextmanager
async def serve(
    url: str, *, verifier: SignatureVerifier | None = VERIFIER, **router: typing.Any
) -> typing.AsyncIterator[Served]:
    config = SagaConfig(
        storage_url=url, sagas=SAGAS, container=di.Container(), compensation_retry_delay=0.0, max_body_bytes=4096
    )
    app = FastAPI(lifespan=saga_api.create_lifespan(config))
    app.add_middleware(saga_api.SagaContextMiddleware)
    app.include_router(saga_api.webhook_router(prefix="/webhooks", verifier=verifier, **router))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield Served(app, client, app.state.saga)


@pytest.fixture
async def served(storage_url: str) -> typing.AsyncIterator[Served]:
    async with serve(storage_url) as served:
        yield served


async def test_fifty_concurrent_identical_deliveries_start_one_saga(served: Served) -> None:
    event = {"order_id": "O-50", "amount": 50.0}

    answers = await asyncio.gather(*(served.deliver("order_created", event) for _ in range(50)))

    assert {r.status_code for r in answers} == {202}
    bodies = [r.json() for r in answers]
    # Each saga was started by exactly one delivery (one delivery may start both, or two one each).
    started = [s["saga"] for b in bodies for s in b["sagas"] if not s["duplicate"]]
    assert sorted(started) == ["webhook_audit", "webhook_order"]
    assert {b["status"] for b in bodies} == {"accepted", "duplicate"}
    assert len({b["correlation_id"] for b in bodies}) == 1
    assert {tuple(s["saga_id"] for s in b["sagas"]) for b in bodies} == {
        (str(derive_saga_id("webhook_order", "O-50")), str(derive_saga_id("webhook_audit", "O-50")))
    }
    await served.settle()
    stored = await served.storage.list_sagas(limit=1000)
    assert sorted((r.name, r.status) for r in stored) == [
        ("webhook_audit", SagaStatus.COMPLETED),
        ("webhook_order", SagaStatus.COMPLETED),
    ]
    assert webhook_sagas.RUNS == {("reserve", "O-50"): 1, ("charge", "O-50"): 1, ("note", "O-50"): 1}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Signature": "sha256=" + "0" * 64, "X-Signature-Timestamp": "{now}"},
        {"X-Signature": "{valid}", "X-Signature-Timestamp": "1000"},  # a replay: outside the window
        {"X-Signature": "{other_body}", "X-Signature-Timestamp": "{now}"},
    ],
    ids=["missing", "wrong", "stale", "other-body"],
)
async def test_a_bad_signature_is_401_and_stores_nothing(served: Served, headers: dict[str, str]) -> None:
    raw = json.dumps({"order_id": "O-1", "amount": 1}).encode()
    good = VERIFIER.headers(raw)
    values = {
        "now": good["X-Signature-Timestamp"],
        "valid": VERIFIER.sign(raw, "1000"),
        "other_body": VERIFIER.headers(raw + b" ")["X-Signature"],
    }
    sent = {name: value.format(**values) for name, value in headers.items()}

    response = await served.deliver("order_created", raw, sign=False, **sent)

    assert response.status_code == 401
    assert "signature" in response.json()["error"].lower()
    assert await served.storage.list_sagas() == []
    assert served.runtime.runner.pending == 0


async def test_status_reflects_completion_and_failure(served: Served) -> None:
    ok = await served.deliver("order_created", {"order_id": "O-1", "amount": 10}, **{"X-Correlation-ID": "ev-ok"})
    bad = await served.deliver("order_created", {"order_id": "O-2", "amount": 20, "fail": True})
    assert ok.status_code == bad.status_code == 202
    assert ok.json()["correlation_id"] == "ev-ok" and ok.headers["X-Correlation-ID"] == "ev-ok"
    await served.settle()

    done = await served.client.get("/webhooks/order_created/status/ev-ok")
    assert done.status_code == 200
    body = done.json()
    assert body["status"] == "completed"
    sagas = {s["saga"]: s for s in body["sagas"]}
    assert sagas["webhook_order"]["status"] == "completed"
    assert [(c["step"], c["response"]) for c in sagas["webhook_order"]["completed_steps"]] == [
        ("reserve", {"reservation_id": "res-O-1"}),
        ("charge", {"charged": 10.0}),
    ]
    assert sagas["webhook_audit"]["completed_steps"][0]["response"] == {"note": "order of 10"}

    failed = (await served.client.get(f"/webhooks/order_created/status/{bad.json()['correlation_id']}")).json()
    assert failed["status"] == "failed"
    order = next(s for s in failed["sagas"] if s["saga"] == "webhook_order")
    assert order["status"] == "failed"
    assert "card refused for O-2" in order["error"]
    assert order["failed_step"] == "charge"
    assert order["compensated_steps"] == ["reserve"]
    assert webhook_sagas.RUNS[("unreserve", "O-2")] == 1

    assert (await served.client.get("/webhooks/order_created/status/unknown-id")).status_code == 404
    assert (await served.client.get("/webhooks/nope/status/ev-ok")).status_code == 404


async def test_bad_deliveries_are_refused_and_store_nothing(served: Served) -> None:
    for source, event, status, message in webhook_sagas.BAD_DELIVERIES:
        response = await served.deliver(source, event)
        assert response.status_code == status, (source, event, response.text)
        assert message in response.json()["error"]

    async def chunks() -> typing.AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(10):
            yield b" " * 1000

    streamed = await served.client.post("/webhooks/order_created", content=chunks())
    assert streamed.status_code == 413
    assert await served.storage.list_sagas() == []

    ignored = await served.deliver("order_created", {"order_id": "O-1", "test_event": True})
    assert ignored.status_code == 202 and ignored.json()["status"] == "ignored"
    assert await served.storage.list_sagas() == []


async def test_a_failed_key_is_retried_when_the_trigger_allows_it(served: Served) -> None:
    webhook_sagas.FLAKY["77"] = 1
    event = {"invoice": {"id": 77, "amount": 5}}
    first = (await served.deliver("payment_due", event)).json()
    await served.settle()
    failed = (await served.client.get(f"/webhooks/payment_due/status/{first['correlation_id']}")).json()
    assert failed["sagas"][0]["status"] == "failed"

    answers = await asyncio.gather(*(served.deliver("payment_due", event) for _ in range(20)))
    bodies = [r.json() for r in answers]
    (retry,) = [b for b in bodies if b["status"] == "accepted"]
    assert retry["sagas"][0]["attempt"] == 1
    await served.settle()
    done = (await served.client.get(f"/webhooks/payment_due/status/{retry['correlation_id']}")).json()
    assert done["status"] == "completed"
    assert webhook_sagas.RUNS[("collect", "77")] == 2
    assert len(await served.storage.list_sagas(name="webhook_payment")) == 2


async def test_without_a_verifier_deliveries_need_no_signature(storage_url: str) -> None:
    async with serve(storage_url, verifier=None, sagas=[webhook_sagas.WebhookPaymentSaga]) as served:
        accepted = await served.deliver("payment_due", {"invoice": {"id": "x", "amount": 1}}, sign=False)
        assert accepted.status_code == 202
        # only the sagas given to the router answer
        assert (await served.deliver("order_created", {"order_id": "O", "amount": 1})).status_code == 404
        await served.settle()
        assert [r.status for r in await served.storage.list_sagas()] == [SagaStatus.COMPLETED]
