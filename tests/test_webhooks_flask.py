"""Webhooks on Flask: the extension's webhook blueprint over memory, SQLite and PostgreSQL storages.

The app is served by a real threaded Werkzeug server on a loopback port: the
50 concurrent deliveries are 50 client threads released at once by a
barrier, each request handled on its own server thread, all recording on the
shared saga loop. Background runs are awaited with `SagaExtension.wait_for_sagas`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import threading
import typing

import di
import flask
import httpx
import pytest
from werkzeug.serving import make_server

from cqrs.integrations.flask import SagaExtension, register_webhook_blueprint
from cqrs.saga.storage.enums import SagaStatus
from cqrs.triggers import derive_saga_id
from django_project import webhook_sagas
from django_project.webhook_sagas import SAGAS

VERIFIER = webhook_sagas.VERIFIER


@dataclasses.dataclass
class Served:
    app: flask.Flask
    ext: SagaExtension
    client: httpx.Client  # thread-safe, pooled: one connection per concurrent request

    def deliver(self, source: str, event: typing.Any, *, sign: bool = True, **headers: str) -> httpx.Response:
        raw = event if isinstance(event, bytes) else json.dumps(event).encode()
        signed = VERIFIER.headers(raw) if sign else {}
        return self.client.post(
            f"/webhooks/{source}", content=raw, headers={"Content-Type": "application/json", **signed, **headers}
        )

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

    def sagas(self, **filters: typing.Any) -> list[typing.Any]:
        storage = self.ext.config(self.app).require_storage()
        return self.ext.run_coroutine(storage.list_sagas(limit=1000, **filters))

    def settle(self) -> None:
        assert self.ext.wait_for_sagas(timeout=30, app=self.app)


@pytest.fixture(autouse=True)
def _reset() -> None:
    webhook_sagas.reset()



@contextlib.contextmanager
def serve(url: str, *, as_function: bool = False, **options: typing.Any) -> typing.Iterator[Served]:
    app = flask.Flask(__name__)
    app.config.update(
        CQRS_SAGA_STORAGE_URL=url, CQRS_SAGA_COMPENSATION_RETRY_DELAY=0.0, CQRS_SAGA_MAX_BODY_BYTES=4096
    )
    ext = SagaExtension(app, sagas=SAGAS, container=di.Container())
    options.setdefault("verifier", VERIFIER)
    if as_function:
        register_webhook_blueprint(app, "/webhooks", **options)
    else:
        ext.register_webhook_blueprint("/webhooks", **options)
    ext.initialize(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="webhook-test-server", daemon=True)
    thread.start()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=30, limits=limits) as client:
            yield Served(app, ext, client)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        ext.close()


@pytest.fixture
def served(storage_url: str) -> typing.Iterator[Served]:
    with serve(storage_url) as served:
        yield served


def test_fifty_concurrent_identical_deliveries_start_one_saga(served: Served) -> None:
    event = {"order_id": "O-50", "amount": 50.0}
    barrier = threading.Barrier(50)
    threads_seen: set[str] = set()
    lock = threading.Lock()

    @served.app.before_request
    def note_thread() -> None:
        with lock:
            threads_seen.add(threading.current_thread().name)

    def deliver(_: int) -> httpx.Response:
        barrier.wait(timeout=30)
        return served.deliver("order_created", event)

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(deliver, range(50)))

    assert {r.status_code for r in answers} == {202}, [r.text for r in answers if r.status_code != 202]
    bodies = [r.json() for r in answers]
    # Each saga was started by exactly one delivery (one delivery may start both, or two one each).
    started = [s["saga"] for b in bodies for s in b["sagas"] if not s["duplicate"]]
    assert sorted(started) == ["webhook_audit", "webhook_order"]
    assert {b["status"] for b in bodies} == {"accepted", "duplicate"}
    assert len({b["correlation_id"] for b in bodies}) == 1
    assert {tuple(s["saga_id"] for s in b["sagas"]) for b in bodies} == {
        (str(derive_saga_id("webhook_order", "O-50")), str(derive_saga_id("webhook_audit", "O-50")))
    }
    assert len(threads_seen) > 1  # the server really handled them on several threads
    served.settle()
    assert sorted((r.name, r.status) for r in served.sagas()) == [
        ("webhook_audit", SagaStatus.COMPLETED),
        ("webhook_order", SagaStatus.COMPLETED),
    ]
    assert webhook_sagas.RUNS == {("reserve", "O-50"): 1, ("charge", "O-50"): 1, ("note", "O-50"): 1}


@pytest.mark.parametrize("storage_url", ["memory", "sqlite"], indirect=True)
def test_a_bad_signature_is_401_and_stores_nothing(served: Served) -> None:
    raw = json.dumps({"order_id": "O-1", "amount": 1}).encode()
    for headers in webhook_sagas.forged_signatures(raw):
        response = served.deliver("order_created", raw, sign=False, **headers)
        assert response.status_code == 401, headers
        assert "signature" in response.json()["error"].lower()
    assert served.sagas() == []


def test_status_reflects_completion_and_failure(served: Served) -> None:
    ok = served.deliver("order_created", {"order_id": "O-1", "amount": 10}, **{"X-Correlation-ID": "ev-ok"})
    bad = served.deliver("order_created", {"order_id": "O-2", "amount": 20, "fail": True})
    assert ok.status_code == bad.status_code == 202
    assert ok.json()["correlation_id"] == "ev-ok" and ok.headers["X-Correlation-ID"] == "ev-ok"
    served.settle()

    done = served.get("/webhooks/order_created/status/ev-ok")
    assert done.status_code == 200
    body = done.json()
    assert body["status"] == "completed"
    sagas = {s["saga"]: s for s in body["sagas"]}
    assert [(c["step"], c["response"]) for c in sagas["webhook_order"]["completed_steps"]] == [
        ("reserve", {"reservation_id": "res-O-1"}),
        ("charge", {"charged": 10.0}),
    ]
    assert sagas["webhook_audit"]["status"] == "completed"

    failed = served.get(f"/webhooks/order_created/status/{bad.json()['correlation_id']}").json()
    assert failed["status"] == "failed"
    order = next(s for s in failed["sagas"] if s["saga"] == "webhook_order")
    assert order["status"] == "failed"
    assert "card refused for O-2" in order["error"]
    assert order["failed_step"] == "charge"
    assert order["compensated_steps"] == ["reserve"]

    missing = served.get("/webhooks/order_created/status/unknown-id")
    assert missing.status_code == 404 and "No saga" in missing.json()["error"]
    assert served.get("/webhooks/nope/status/ev-ok").status_code == 404


@pytest.mark.parametrize("storage_url", ["memory", "sqlite"], indirect=True)
def test_bad_deliveries_are_refused_and_store_nothing(served: Served) -> None:
    for source, event, status, message in webhook_sagas.BAD_DELIVERIES:
        response = served.deliver(source, event)
        assert response.status_code == status, (source, event, response.text)
        assert message in response.json()["error"]

    def chunks() -> typing.Iterator[bytes]:  # chunked, no Content-Length: counted while read
        for _ in range(10):
            yield b" " * 1000

    streamed = served.client.post("/webhooks/order_created", content=chunks())
    assert streamed.status_code == 413
    assert served.sagas() == []


def test_a_failed_key_is_retried_when_the_trigger_allows_it(served: Served) -> None:
    webhook_sagas.FLAKY["77"] = 1
    event = {"invoice": {"id": 77, "amount": 5}}
    first = served.deliver("payment_due", event).json()
    served.settle()
    assert served.get(f"/webhooks/payment_due/status/{first['correlation_id']}").json()["status"] == "failed"

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        bodies = [r.json() for r in pool.map(lambda _: served.deliver("payment_due", event), range(10))]
    (retry,) = [b for b in bodies if b["status"] == "accepted"]
    assert retry["sagas"][0]["attempt"] == 1
    served.settle()
    assert served.get(f"/webhooks/payment_due/status/{retry['correlation_id']}").json()["status"] == "completed"
    assert sorted(r.status for r in served.sagas(name="webhook_payment")) == [
        SagaStatus.COMPLETED,
        SagaStatus.FAILED,
    ]


def test_the_module_function_registers_the_blueprint_without_a_verifier(sqlite_url: str) -> None:
    with serve(sqlite_url, as_function=True, verifier=None) as served:
        response = served.deliver("order_created", {"order_id": "F-1", "amount": 1}, sign=False)
        assert response.status_code == 202
        served.settle()
        assert {r.status for r in served.sagas()} == {SagaStatus.COMPLETED}
    with pytest.raises(RuntimeError, match="No SagaExtension"):
        register_webhook_blueprint(flask.Flask("bare"))
