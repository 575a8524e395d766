"""Webhooks in FastAPI, Flask and Django: one suite over the three (and memory, SQLite, PostgreSQL).

Each framework's webhook routes are mounted as its users mount them
(`web_harness.serve_webhooks`): ``/webhooks`` signed with the test secret,
``/open-hooks`` with one source accepted unsigned. Concurrent deliveries
come from threads released together by a barrier.
"""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import threading
import typing

import pytest

from cqrs.saga.storage.enums import SagaStatus
from cqrs.triggers import derive_saga_id
from django_project import webhook_sagas
from django_project.testing import _django_configured  # noqa: F401  (the fixture Django apps need)
from web_harness import FRAMEWORKS, Reply, Served, serve_webhooks

VERIFIER = webhook_sagas.VERIFIER
STORAGES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(autouse=True)
def _reset() -> None:
    webhook_sagas.reset()


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=STORAGES)
def served(framework: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> typing.Iterator[Served]:
    with serve_webhooks(framework, request, request.param, tmp_path) as served:
        yield served


@pytest.fixture
def served_sqlite(framework: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> typing.Iterator[Served]:
    with serve_webhooks(framework, request, "sqlite", tmp_path) as served:
        yield served


def deliver(served: Served, source: str, event: typing.Any, *, sign: bool = True, prefix: str = "webhooks",
            **headers: str) -> Reply:
    raw = event if isinstance(event, bytes) else json.dumps(event).encode()
    signed = VERIFIER.headers(raw) if sign else {}
    return served.request(
        "POST", f"/{prefix}/{source}", content=raw, headers={"content-type": "application/json", **signed, **headers}
    )


def concurrently(count: int, call: typing.Callable[[], Reply]) -> list[Reply]:
    barrier = threading.Barrier(count)

    def one(_: int) -> Reply:
        barrier.wait(timeout=30)
        return call()

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_fifty_concurrent_identical_deliveries_start_one_saga(served: Served) -> None:
    event = {"order_id": "O-50", "amount": 50.0}
    answers = concurrently(50, lambda: deliver(served, "order_created", event))

    assert {r.status for r in answers} == {202}, [r.text for r in answers if r.status != 202]
    bodies = [r.json() for r in answers]
    # Each saga was started by exactly one delivery (one delivery may start both, or two one each).
    started = [s["saga"] for b in bodies for s in b["sagas"] if not s["duplicate"]]
    assert sorted(started) == ["webhook_audit", "webhook_order"]
    assert {b["status"] for b in bodies} == {"accepted", "duplicate"}
    assert len({b["correlation_id"] for b in bodies}) == 1
    assert {tuple(s["saga_id"] for s in b["sagas"]) for b in bodies} == {
        (str(derive_saga_id("webhook_order", "O-50")), str(derive_saga_id("webhook_audit", "O-50")))
    }
    served.settle()
    assert sorted((r.name, r.status) for r in served.stored()) == [
        ("webhook_audit", SagaStatus.COMPLETED),
        ("webhook_order", SagaStatus.COMPLETED),
    ]
    assert webhook_sagas.RUNS == {("reserve", "O-50"): 1, ("charge", "O-50"): 1, ("note", "O-50"): 1}


def test_a_bad_signature_is_401_and_stores_nothing(served_sqlite: Served) -> None:
    raw = json.dumps({"order_id": "O-1", "amount": 1}).encode()
    for headers in webhook_sagas.forged_signatures(raw):
        response = deliver(served_sqlite, "order_created", raw, sign=False, **headers)
        assert response.status == 401, (headers, response.text)
        assert response.media_type == "application/problem+json"
        assert "signature" in response.json()["detail"].lower()
    assert served_sqlite.stored() == []


def test_status_reflects_completion_and_failure(served: Served) -> None:
    ok = deliver(served, "order_created", {"order_id": "O-1", "amount": 10}, **{"X-Correlation-ID": "ev-ok"})
    bad = deliver(served, "order_created", {"order_id": "O-2", "amount": 20, "fail": True})
    assert ok.status == bad.status == 202
    assert ok.json()["correlation_id"] == "ev-ok" and ok.headers["x-correlation-id"] == "ev-ok"
    served.settle()

    done = served.request("GET", "/webhooks/order_created/status/ev-ok")
    assert done.status == 200
    body = done.json()
    assert body["status"] == "completed"
    sagas = {s["saga"]: s for s in body["sagas"]}
    assert [(c["step"], c["response"]) for c in sagas["webhook_order"]["completed_steps"]] == [
        ("reserve", {"reservation_id": "res-O-1"}),
        ("charge", {"charged": 10.0}),
    ]
    assert sagas["webhook_audit"]["completed_steps"][0]["response"] == {"note": "order of 10"}

    failed = served.request("GET", f"/webhooks/order_created/status/{bad.json()['correlation_id']}").json()
    assert failed["status"] == "failed"
    order = next(s for s in failed["sagas"] if s["saga"] == "webhook_order")
    assert order["status"] == "failed" and "card refused for O-2" in order["error"]
    assert order["failed_step"] == "charge" and order["compensated_steps"] == ["reserve"]

    for path in ("/webhooks/order_created/status/unknown-id", "/webhooks/nope/status/ev-ok"):
        missing = served.request("GET", path)
        assert missing.status == 404 and missing.media_type == "application/problem+json"


def test_bad_deliveries_are_refused_and_store_nothing(served_sqlite: Served) -> None:
    for source, event, status, message in webhook_sagas.BAD_DELIVERIES:
        response = deliver(served_sqlite, source, event)
        assert response.status == status, (source, event, response.text)
        assert response.media_type == "application/problem+json"
        assert message in response.json()["detail"], response.json()
    wrong_method = served_sqlite.request("GET", "/webhooks/order_created")
    assert wrong_method.status == 405 and "POST" in wrong_method.headers["allow"]
    ignored = deliver(served_sqlite, "order_created", {"order_id": "O-1", "test_event": True})
    assert ignored.status == 202 and ignored.json()["status"] == "ignored"
    assert served_sqlite.stored() == []


def test_a_failed_key_is_retried_when_the_trigger_allows_it(served: Served) -> None:
    webhook_sagas.FLAKY["77"] = 1
    event = {"invoice": {"id": 77, "amount": 5}}
    first = deliver(served, "payment_due", event).json()
    served.settle()
    assert served.request("GET", f"/webhooks/payment_due/status/{first['correlation_id']}").json()["status"] == "failed"

    bodies = [r.json() for r in concurrently(10, lambda: deliver(served, "payment_due", event))]
    (retry,) = [b for b in bodies if b["status"] == "accepted"]
    assert retry["sagas"][0]["attempt"] == 1
    served.settle()
    done = served.request("GET", f"/webhooks/payment_due/status/{retry['correlation_id']}").json()
    assert done["status"] == "completed"
    assert webhook_sagas.RUNS[("collect", "77")] == 2
    assert sorted(r.status for r in served.stored(name="webhook_payment")) == [SagaStatus.COMPLETED, SagaStatus.FAILED]


def test_only_sources_named_insecure_are_accepted_unsigned(served_sqlite: Served) -> None:
    accepted = deliver(served_sqlite, "payment_due", {"invoice": {"id": "x", "amount": 1}}, sign=False,
                       prefix="open-hooks")
    assert accepted.status == 202, accepted.text
    # only the payment saga is routed there, and nothing else goes unsigned
    unlisted = deliver(served_sqlite, "order_created", {"order_id": "O", "amount": 1}, sign=False, prefix="open-hooks")
    assert unlisted.status == 401
    signed = deliver(served_sqlite, "order_created", {"order_id": "O", "amount": 1}, prefix="webhooks")
    assert signed.status == 202
    served_sqlite.settle()
    assert sorted(r.name for r in served_sqlite.stored()) == ["webhook_audit", "webhook_order", "webhook_payment"]
