"""examples/django_app: its endpoints in-process (Django test client) and as users run it (runserver).

POST /orders/ takes the seed's JSON body, creates the Order row and starts its
saga in one transaction; bad input is a 400 naming the field, with nothing
written. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import typing
import urllib.error
import urllib.request
import uuid

import pytest

from django_project.testing import (
    EXAMPLE,
    Database,
    _django_configured,  # noqa: F401
    _saga_db,  # noqa: F401
    count_rows,
    example_manage,
    stop,
)
from example_server import free_port

JSON = "application/json"
ORDER: dict[str, typing.Any] = {
    "order_id": "ORD-001",
    "user_id": "USER-123",
    "items": [{"id": "ITEM-1", "name": "Widget", "quantity": 2}],
    "amount": 99.99,
}
STEPS = ["reserve_inventory", "charge_payment", "ship_order"]


def nothing_written() -> bool:
    return count_rows("orders_order") == 0 and count_rows("saga_executions") == 0


def test_health(saga_db: Database, client: typing.Any) -> None:
    response = client.get("/health/")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert "OrderSaga" in response.json()["sagas"]
    assert client.post("/health/").status_code == 405


def test_create_order_then_status_and_diagram(saga_db: Database, client: typing.Any) -> None:
    from orders.models import Order

    from cqrs.integrations.django import wait_for_sagas

    response = client.post("/orders/", ORDER, content_type=JSON, headers={"X-Correlation-ID": "my-trace-123"})
    assert response.status_code == 202, response.content
    body = response.json()
    saga_id = body["saga_id"]
    assert body == {
        "order_id": "ORD-001",
        "saga_id": saga_id,
        "status": "accepted",
        "status_url": f"/orders/{saga_id}/",
        "diagram_url": f"/orders/{saga_id}/diagram/",
    }
    assert response["X-Correlation-ID"] == "my-trace-123"
    order = Order.objects.get(order_id="ORD-001")
    assert (order.user_id, str(order.amount), order.items) == ("USER-123", "99.99", ORDER["items"])
    assert order.saga_id == uuid.UUID(saga_id) and order.correlation_id == "my-trace-123"

    assert wait_for_sagas(timeout=30)
    status = client.get(body["status_url"]).json()
    assert status["status"] == "completed"
    assert status["saga"] == "OrderSaga"
    assert status["correlation_id"] == "my-trace-123"
    assert [step["step"] for step in status["completed_steps"]] == STEPS
    assert status["context"]["items"] == ORDER["items"]
    assert status["context"]["tracking_number"] == "trk-ORD-001"

    diagram = client.get(body["diagram_url"])
    assert diagram["Content-Type"].startswith("text/plain")
    text = diagram.content.decode()
    assert all(step in text for step in STEPS)
    as_json = client.get(body["diagram_url"] + "?format=json").json()
    assert as_json == {"saga_id": saga_id, "diagram": text}


def test_a_declined_payment_is_compensated(saga_db: Database, client: typing.Any) -> None:
    from cqrs.integrations.django import wait_for_sagas

    response = client.post("/orders/", {**ORDER, "order_id": "ORD-BIG", "amount": 12_000}, content_type=JSON)
    assert response.status_code == 202
    assert wait_for_sagas(timeout=30)
    status = client.get(response.json()["status_url"]).json()
    assert status["status"] == "failed"
    assert status["failed_step"] == "charge_payment"
    assert status["compensated_steps"] == ["reserve_inventory"]
    assert "declined" in status["error"]


def without(key: str) -> dict[str, typing.Any]:
    return {k: v for k, v in ORDER.items() if k != key}


#: Request bodies the example refuses with a 400, and the field the answer must name (None: not JSON / not an object).
BAD_BODIES: list[tuple[bytes, str | None]] = [
    (b"this is not json", None),
    (b"", None),
    (b'["ORD-001"]', None),
    (json.dumps(without("order_id")).encode(), "order_id"),
    (json.dumps(without("user_id")).encode(), "user_id"),
    (json.dumps(without("items")).encode(), "items"),
    (json.dumps(without("amount")).encode(), "amount"),
    (json.dumps({**ORDER, "amount": "99.99"}).encode(), "amount"),
    (json.dumps({**ORDER, "amount": -5}).encode(), "amount"),
    (json.dumps({**ORDER, "order_id": 1}).encode(), "order_id"),
    (json.dumps({**ORDER, "user_id": ""}).encode(), "user_id"),
    (json.dumps({**ORDER, "items": "Widget"}).encode(), "items"),
    (json.dumps({**ORDER, "items": []}).encode(), "items"),
    (json.dumps({**ORDER, "items": [{"id": "I", "name": "W", "quantity": "2"}]}).encode(), "items.0.quantity"),
    (json.dumps({**ORDER, "items": [{"id": "I", "name": "W"}]}).encode(), "items.0.quantity"),
    (json.dumps({**ORDER, "coupon": "FREE"}).encode(), "coupon"),
    (b"\xff\xfe{}", None),
    (b"null", None),
    (json.dumps({**ORDER, "amount": None}).encode(), "amount"),
    (json.dumps({**ORDER, "amount": 10_000_000}).encode(), "amount"),
    (json.dumps({**ORDER, "order_id": "O" * 65}).encode(), "order_id"),
    (json.dumps({**ORDER, "items": ORDER["items"] * 101}).encode(), "items"),
]


def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(saga_db: Database, client: typing.Any) -> None:
    for body, field in BAD_BODIES:
        response = client.post("/orders/", body, content_type=JSON)
        assert response.status_code == 400, (body, response.content)
        answer = response.json()
        if field is None:
            assert "JSON" in answer["error"], (body, answer)
        else:
            assert [problem["field"] for problem in answer["details"]] == [field], (body, answer)
            assert field in answer["error"], (body, answer)
        assert nothing_written(), body


def test_an_oversized_body_is_refused_before_it_is_parsed(saga_db: Database, client: typing.Any) -> None:
    """Over ``CQRS_SAGA["MAX_BODY_BYTES"]`` (1 MiB): 413, as in the Flask and FastAPI integrations."""
    from cqrs.integrations.django import get_saga_config

    limit = get_saga_config().max_body_bytes
    body = json.dumps({**ORDER, "user_id": "U" * limit}).encode()
    response = client.post("/orders/", body, content_type=JSON)
    assert response.status_code == 413, response.content
    assert response.json() == {"error": f"Request body is {len(body)} bytes; the limit is {limit}"}
    assert nothing_written()


def test_a_repeated_order_id_is_a_409_and_starts_no_second_saga(saga_db: Database, client: typing.Any) -> None:
    from cqrs.integrations.django import wait_for_sagas

    assert client.post("/orders/", ORDER, content_type=JSON).status_code == 202
    again = client.post("/orders/", {**ORDER, "amount": 5}, content_type=JSON)
    assert again.status_code == 409
    assert "already exists" in again.json()["error"]
    assert wait_for_sagas(timeout=30)
    assert count_rows("orders_order") == 1
    assert count_rows("saga_executions") == 1


def test_status_of_unknown_or_malformed_ids(saga_db: Database, client: typing.Any) -> None:
    unknown = client.get(f"/orders/{uuid.uuid4()}/")
    assert unknown.status_code == 404 and "No saga" in unknown.json()["error"]
    malformed = client.get("/orders/ORD-001/diagram/")
    assert malformed.status_code == 422
    assert client.get("/orders/").status_code == 405


# -- the example as users run it ------------------------------------------------------------------------


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": JSON})
    request.add_header("X-Correlation-ID", "e2e-trace")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.mark.slow
def test_the_example_served_by_runserver(saga_db: Database) -> None:
    migrated = example_manage(saga_db, "migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "manage.py"), "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=EXAMPLE, env=saga_db.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                if http("GET", f"{base}/health/")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "runserver did not answer /health/"
            time.sleep(0.1)

        status, headers, raw = http("POST", f"{base}/orders/", json.dumps(ORDER).encode())
        assert status == 202, raw
        assert headers["X-Correlation-ID"] == "e2e-trace"
        saga_id = json.loads(raw)["saga_id"]

        deadline = time.monotonic() + 30
        while True:
            state = json.loads(http("GET", f"{base}/orders/{saga_id}/")[2])
            if state["status"] == "completed":
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        assert state["correlation_id"] == "e2e-trace"

        bad = {**ORDER, "order_id": "ORD-2", "amount": "1"}
        status, _, raw = http("POST", f"{base}/orders/", json.dumps(bad).encode())
        assert status == 400 and json.loads(raw)["details"][0]["field"] == "amount"
    finally:
        stop(server)
    log = server.communicate()[0]
    assert "[e2e-trace] orders.sagas: order ORD-001: shipped as trk-ORD-001" in log

    listed = example_manage(saga_db, "saga_list")
    assert listed.returncode == 0 and saga_id in listed.stdout and "completed" in listed.stdout
    checked = example_manage(saga_db, "saga_check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert count_rows("orders_order") == 1


@pytest.mark.slow
def test_a_bad_cqrs_saga_setting_fails_manage_py_check(saga_db: Database) -> None:
    env = saga_db.env(CQRS_SAGA_STORAGE_URL="oracle://root@localhost/shop")
    checked = subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), "check"],
        cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120,
    )
    assert checked.returncode == 1
    assert "cqrs_saga.E001" in checked.stderr and "STORAGE_URL" in checked.stderr
    saga_check = subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), "saga_check"],
        cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120,
    )
    assert saga_check.returncode == 1
    assert "FAIL  configuration: CQRS_SAGA is invalid" in saga_check.stdout
