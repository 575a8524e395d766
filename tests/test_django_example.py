"""examples/django_app: its endpoints in-process (Django test client) and as users run it (runserver).

POST /orders takes the order service's JSON body, creates the Order row and
starts its saga in one transaction; bad input is a problem naming the field,
with nothing written. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import typing
import urllib.error
import urllib.request

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
    "items": [{"sku": "ITEM-1", "quantity": 2}],
    "amount": 99.99,
}
STEPS = ["reserve_inventory", "charge_payment", "ship_order"]


def nothing_written() -> bool:
    return count_rows("orders_order") == 0 and count_rows("saga_executions") == 0


# The service itself (routes, validation, problems, operator routes) is tested with the FastAPI and Flask
# examples' in test_web_examples.py; here what only Django's has: the Order row in the saga's transaction.


def test_the_order_row_and_its_saga_are_written_in_one_transaction(saga_db: Database, client: typing.Any) -> None:
    from orders.models import Order

    from cqrs.integrations.django import wait_for_sagas

    response = client.post("/orders", ORDER, content_type=JSON, headers={"X-Correlation-ID": "my-trace-123"})
    assert response.status_code == 202, response.content
    saga_id = response.json()["saga_id"]
    order = Order.objects.get(order_id="ORD-001")
    assert str(order.saga_id) == saga_id and order.correlation_id == "my-trace-123"
    assert wait_for_sagas(timeout=30)
    assert client.get(f"/sagas/{saga_id}").json()["status"] == "completed"

    again = client.post("/orders", {**ORDER, "amount": 5}, content_type=JSON)
    assert again.status_code == 409 and again["Content-Type"] == "application/problem+json"
    assert "already exists" in again.json()["detail"]
    assert count_rows("orders_order") == 1 and count_rows("saga_executions") == 1


def test_bad_input_writes_nothing(saga_db: Database, client: typing.Any) -> None:
    for body in (b"this is not json", json.dumps({**ORDER, "amount": "1"}).encode(), b"{" + b" " * 2_000_000 + b"}"):
        response = client.post("/orders", body, content_type=JSON)
        assert response.status_code in (400, 413, 422) and response["Content-Type"] == "application/problem+json"
    assert nothing_written()


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
                if http("GET", f"{base}/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "runserver did not answer /health"
            time.sleep(0.1)

        status, headers, raw = http("POST", f"{base}/orders", json.dumps(ORDER).encode())
        assert status == 202, raw
        assert headers["X-Correlation-ID"] == "e2e-trace"
        saga_id = json.loads(raw)["saga_id"]

        deadline = time.monotonic() + 30
        while True:
            state = json.loads(http("GET", f"{base}/sagas/{saga_id}")[2])
            if state["status"] == "completed":
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        assert state["correlation_id"] == "e2e-trace"

        bad = {**ORDER, "order_id": "ORD-2", "amount": "1"}
        status, _, raw = http("POST", f"{base}/orders", json.dumps(bad).encode())
        assert status == 422 and json.loads(raw)["errors"][0]["field"] == "amount"
    finally:
        stop(server)
    log = server.communicate()[0]
    assert "[e2e-trace] orders: order ORD-001: shipped as trk-ORD-001" in log

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
    assert "Traceback" not in checked.stderr
    saga_check = subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), "saga_check"],
        cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120,
    )
    assert saga_check.returncode == 1
    assert "FAIL  configuration: CQRS_SAGA is invalid: CQRS_SAGA['STORAGE_URL']" in saga_check.stdout
