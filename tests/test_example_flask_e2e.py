"""examples/flask_app as users run it: ``python main.py --port N``, a threaded WSGI server on SQLite
(and on PostgreSQL, chosen by ``CQRS_SAGA_STORAGE_URL``, when one is running).

200 orders are sent at once from 24 client threads, each with its own
X-Correlation-ID; every answer must echo its id, every saga must have
completed (none left running), and the SQLite file must hold each saga with
its correlation id, after a graceful SIGTERM shutdown.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import threading
import typing
import uuid

import httpx
import pytest

from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from example_server import ExampleServer, stored

pytestmark = pytest.mark.slow

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "flask_app" / "main.py"
STEPS = ["reserve_inventory", "charge_payment", "ship_order"]
ORDERS = 200
CLIENT_THREADS = 24


def order_body(n: int, **extra: typing.Any) -> dict[str, typing.Any]:
    return {
        "order_id": f"E2E-{n:03d}",
        "user_id": f"USER-{n % 7}",
        "items": [{"sku": f"ITEM-{n % 5}", "quantity": 1 + n % 3}],
        "amount": 10.0 + n,
        **extra,
    }


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_example_serves_concurrent_orders(
    tmp_path: pathlib.Path, request: pytest.FixtureRequest, database: str
) -> None:
    url = request.getfixturevalue(f"{database}_url")
    server = ExampleServer(EXAMPLE, tmp_path, url)
    try:
        server.wait_until_healthy()
        assert f"curl -s -X POST {server.base_url}/orders" in server.output
        assert f"curl -s {server.base_url}/sagas/<saga_id>/diagram" in server.output

        limits = httpx.Limits(max_connections=CLIENT_THREADS, max_keepalive_connections=CLIENT_THREADS)
        with httpx.Client(base_url=server.base_url, timeout=60, limits=limits) as client:

            lock = threading.Lock()
            in_flight = [0, 0]  # now, most at once

            def place(n: int) -> tuple[int, str, httpx.Response]:
                correlation_id = f"e2e-{n:03d}-{uuid.uuid4().hex[:8]}"
                with lock:
                    in_flight[0] += 1
                    in_flight[1] = max(in_flight)
                try:
                    response = client.post(
                        "/orders/wait", json=order_body(n), headers={"X-Correlation-ID": correlation_id}
                    )
                finally:
                    with lock:
                        in_flight[0] -= 1
                return n, correlation_id, response

            with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
                answers = list(pool.map(place, range(ORDERS)))

            assert in_flight[1] > 1, "the orders were not sent concurrently"
            sent: dict[str, str] = {}  # saga id -> correlation id
            for n, correlation_id, response in answers:
                assert response.status_code == 200, response.text
                assert response.headers["X-Correlation-ID"] == correlation_id
                body = response.json()
                assert body["status"] == "completed"
                assert body["correlation_id"] == correlation_id
                assert body["order_id"] == f"E2E-{n:03d}"
                assert [s["step"] for s in body["completed_steps"]] == STEPS
                sent[body["saga_id"]] = correlation_id
            assert len(sent) == ORDERS

            # Declined, compensated: a result that says so; bad input: problem details and nothing stored.
            declined = client.post(
                "/orders/wait", json=order_body(999, amount=50_000), headers={"X-Correlation-ID": "no"}
            )
            assert declined.status_code == 200 and declined.headers["X-Correlation-ID"] == "no"
            assert declined.json()["status"] == "failed" and "PaymentDeclined" in declined.json()["error"]
            bad = client.post("/orders", json={"order_id": "E2E-BAD", "user_id": "U", "items": [], "amount": 1})
            assert bad.status_code == 422 and "items" in bad.json()["detail"]
            assert bad.headers["content-type"] == "application/problem+json"
            assert client.post("/orders", content=b"nope").status_code == 400

            # An order id is used once: repeating an order is a 409; nothing runs again.
            again = client.post("/orders", json=order_body(0))
            assert again.status_code == 409 and answers[0][2].json()["saga_id"] in again.json()["detail"]

            # Status and diagrams while the server runs.
            some_id = answers[5][2].json()["saga_id"]
            status = client.get(f"/sagas/{some_id}").json()
            assert status["status"] == "completed" and status["correlation_id"] == answers[5][1]
            assert [s["step"] for s in status["completed_steps"]] == STEPS
            diagram = client.get(f"/sagas/{some_id}/diagram")
            assert diagram.status_code == 200 and diagram.text.startswith("flowchart")
            assert client.get(f"/sagas/{uuid.uuid4()}").status_code == 404
            assert client.get("/sagas/not-a-uuid").status_code == 422
            assert client.get("/health").json()["status"] == "ok"
            assert len(client.get("/sagas?status=completed&limit=500").json()["sagas"]) == ORDERS

        assert server.stop() == 0, server.output
    finally:
        server.kill()

    output = server.output
    assert "shutting down" in output
    assert "Traceback" not in output, output
    assert f"[{answers[7][1]}] orders: order E2E-007: shipped" in output  # step logs carry the request's id

    records, histories = stored(url, limit=10 * ORDERS)
    by_id = {str(r.saga_id): r for r in records}
    assert len(records) == ORDERS + 1
    declined_id = declined.json()["saga_id"]
    assert by_id[declined_id].status is SagaStatus.FAILED
    assert [(e.step_name, e.action, e.status) for e in histories[uuid.UUID(declined_id)]] == [
        ("reserve_inventory", "act", SagaStepStatus.COMPLETED),
        ("charge_payment", "act", SagaStepStatus.FAILED),
        ("reserve_inventory", "compensate", SagaStepStatus.COMPENSATED),
    ]
    for saga_id, correlation_id in sent.items():
        record = by_id[saga_id]
        assert record.status is SagaStatus.COMPLETED, (saga_id, record.status)
        assert record.correlation_id == correlation_id
        assert [(e.step_name, e.status) for e in histories[record.saga_id]] == [
            (name, SagaStepStatus.COMPLETED) for name in STEPS
        ]
    assert not [r for r in records if r.status in (SagaStatus.RUNNING, SagaStatus.PENDING, SagaStatus.COMPENSATING)]
