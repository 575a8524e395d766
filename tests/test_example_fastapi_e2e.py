"""examples/fastapi_app as users run it: a real uvicorn process on a loopback port, SQLite in tmp_path.

Orders go in over HTTP (background, failing, streamed); the server is stopped
with SIGTERM (or killed, then restarted); the SQLite file must then hold every
saga created, each completed or failed with its compensations.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import signal
import time
import typing
import uuid

import httpx
import pytest

from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import SagaLogEntry
from example_server import ExampleServer, stored

pytestmark = pytest.mark.slow

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "fastapi_app" / "main.py"
STEPS = ["reserve_inventory", "charge_payment", "ship_order"]
# uvicorn shuts down gracefully on SIGTERM, then re-raises it: the exit status says "terminated".
GRACEFUL = (0, -signal.SIGTERM)


@contextlib.contextmanager
def running(tmp_path: pathlib.Path, storage_url: str, **env: str) -> typing.Iterator[ExampleServer]:
    server = ExampleServer(EXAMPLE, tmp_path, storage_url, **env)
    try:
        server.wait_until_healthy()
        yield server
    finally:
        if server.process.poll() is None:
            server.kill()
        elif not server._log.closed:
            server._log.close()


def read_sse(client: httpx.Client, body: dict[str, typing.Any]) -> list[dict[str, typing.Any]]:
    """POST /orders/stream and read it as a browser's EventSource would: line by line."""
    events: list[dict[str, typing.Any]] = []
    with client.stream("POST", "/orders/stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name: str | None = None
        data: list[str] = []
        for line in response.iter_lines():
            if line == "":
                if name is not None:
                    payload = json.loads("\n".join(data))
                    assert payload["type"] == name
                    events.append(payload)
                name, data = None, []
            elif line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
    return events


def steps(history: list[SagaLogEntry]) -> list[tuple[str, str, str]]:
    return [(e.step_name, e.action, e.status.value) for e in history]


COMPLETED_RUN = [(name, "act", SagaStepStatus.COMPLETED.value) for name in STEPS]
COMPENSATED_RUN = [
    ("reserve_inventory", "act", "completed"),
    ("charge_payment", "act", "failed"),
    ("reserve_inventory", "compensate", "compensated"),
]


DECLINED = {"amount": 20_000.0}  # over the example's payment limit


def order(n: int, **extra: typing.Any) -> dict[str, typing.Any]:
    return {
        "order_id": f"E-{n}", "user_id": "U-1",
        "items": [{"sku": "book", "quantity": 1}, {"sku": "pen", "quantity": 2}],
        "amount": 10.0 + n, **extra,
    }


def test_example_app_end_to_end(tmp_path: pathlib.Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'orders.sqlite3'}"
    expected: dict[str, list[tuple[str, str, str]]] = {}
    with running(tmp_path, url) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        assert f"curl -s -X POST {server.base_url}/orders" in server.output
        assert f"curl -N -X POST {server.base_url}/orders/stream" in server.output

        # Background runs: 202 with the id at once.
        extras: list[dict[str, typing.Any]] = [{}, {}, DECLINED, {"ship_delay": 3}]
        for n, extra in enumerate(extras):
            response = client.post("/orders", json=order(n, **extra), headers={"X-Correlation-ID": f"e2e-{n}"})
            assert response.status_code == 202, response.text
            assert response.headers["x-correlation-id"] == f"e2e-{n}"
            body = response.json()
            assert response.headers["location"] == body["status_url"] == f"/sagas/{body['saga_id']}"
            expected[body["saga_id"]] = COMPENSATED_RUN if extra is DECLINED else COMPLETED_RUN
        slow_id = list(expected)[-1]

        # Streams, read line by line.
        events = read_sse(client, order(10, ship_delay=0.2))
        assert [e["type"] for e in events] == ["start", *["step_completed"] * 3, "completed"]
        assert [e["step"] for e in events[1:4]] == STEPS
        assert events[3]["response"] == {"tracking_number": "trk-E-10"}
        expected[events[0]["saga_id"]] = COMPLETED_RUN

        events = read_sse(client, order(11, **DECLINED))
        assert [(e["type"], e.get("step")) for e in events] == [
            ("start", None),
            ("step_completed", "reserve_inventory"),
            ("step_failed", "charge_payment"),
            ("compensating", None),
            ("step_compensated", "reserve_inventory"),
            ("failed", None),
        ]
        assert "PaymentDeclined" in events[-1]["error"]
        expected[events[0]["saga_id"]] = COMPENSATED_RUN

        # A run waited for.
        waited = client.post("/orders/wait", json=order(12)).json()
        assert waited["status"] == "completed"
        assert waited["completed_steps"][2] == {"step": "ship_order", "response": {"tracking_number": "trk-E-12"}}
        expected[waited["saga_id"]] = COMPLETED_RUN

        # Status and diagram of the stream that completed; errors stay 4xx JSON.
        status = client.get(f"/sagas/{waited['saga_id']}").json()
        assert status["status"] == "completed"
        assert [s["step"] for s in status["completed_steps"]] == STEPS
        diagram = client.get(f"/sagas/{waited['saga_id']}/diagram")
        assert diagram.status_code == 200 and diagram.text.startswith("flowchart")
        assert client.get(f"/sagas/{uuid.uuid4()}").status_code == 404
        assert client.get("/sagas/nope").status_code == 422
        bad = client.post("/orders", json={"order_id": "E-99", "items": "book", "amount": "ten"})
        assert bad.status_code == 422 and "amount" in bad.json()["detail"]
        assert bad.headers["content-type"] == "application/problem+json"

        # Stop while the slow background saga is still shipping: shutdown lets it finish.
        assert client.get(f"/sagas/{slow_id}").json()["status"] in ("pending", "running")
        assert server.stop(signal.SIGTERM) in GRACEFUL, server.output
    assert "shutting down" in server.output
    assert "Application shutdown complete" in server.output

    records, histories = stored(url)
    assert {str(r.saga_id) for r in records} == set(expected), "a saga was lost or one too many was stored"
    for record in records:
        history = steps(histories[record.saga_id])
        assert history == expected[str(record.saga_id)], (record, history)
        want = SagaStatus.COMPLETED if history == COMPLETED_RUN else SagaStatus.FAILED
        assert record.status == want, record
    by_id = {str(r.saga_id): r for r in records}
    assert by_id[slow_id].correlation_id == "e2e-3"


def test_example_app_finishes_a_saga_interrupted_by_a_crash(tmp_path: pathlib.Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'orders.sqlite3'}"
    fast_leases = {"CQRS_SAGA_LEASE_SECONDS": "1", "CQRS_SAGA_RECOVERY_INTERVAL": "0.2"}
    with running(tmp_path, url, **fast_leases) as server, httpx.Client(base_url=server.base_url) as client:
        saga_id = client.post("/orders", json=order(1, ship_delay=3)).json()["saga_id"]
        deadline = time.monotonic() + 10
        while len(client.get(f"/sagas/{saga_id}").json()["completed_steps"]) < 2:
            assert time.monotonic() < deadline, "the saga did not get to shipping"
            time.sleep(0.05)
        server.kill()  # SIGKILL while shipping: no shutdown, the lease is left to expire

    records, _ = stored(url)
    assert [r.status for r in records] == [SagaStatus.RUNNING]

    with running(tmp_path, url, **fast_leases) as server, httpx.Client(base_url=server.base_url) as client:
        deadline = time.monotonic() + 30
        while (status := client.get(f"/sagas/{saga_id}").json())["status"] != "completed":
            assert time.monotonic() < deadline, f"recovery did not finish the saga: {status}"
            time.sleep(0.1)
        assert server.stop() in GRACEFUL, server.output

    records, histories = stored(url)
    assert [(str(r.saga_id), r.status) for r in records] == [(saga_id, SagaStatus.COMPLETED)]
    assert steps(histories[records[0].saga_id]) == COMPLETED_RUN
