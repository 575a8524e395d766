"""The order service of the three examples, one suite over FastAPI, Flask and Django (SQLite, PostgreSQL).

The examples are the same service (payload, routes, validation, saga): each
test runs against each framework's own example, as its users run it
(`web_harness.serve_example`), and asserts the same answers: 202 with the
status link, 409 for a used order id, runs to the end, SSE, problem details
(RFC 9457) for every refusal, the operator routes, the configured
correlation header, and the integration's INFO record of an accepted saga.
Hostile inputs get a 4xx problem and store nothing, on every backend.
"""

from __future__ import annotations

import json
import logging
import pathlib
import typing
import uuid

import pytest

from django_project.testing import _django_configured  # noqa: F401  (the fixture Django apps need)
from log_capture import capturing
from web_harness import BACKENDS, FRAMEWORKS, Reply, Served, serve_example

ORDER = {"order_id": "A-1", "user_id": "U-1", "items": [{"sku": "book", "quantity": 2}], "amount": 42.5}
STEPS = ["reserve_inventory", "charge_payment", "ship_order"]
BODY_ROUTES = ["/orders", "/orders/wait", "/orders/stream"]


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=BACKENDS)
def served(framework: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> typing.Iterator[Served]:
    with serve_example(framework, request, request.param, tmp_path) as served:
        yield served


@pytest.fixture
def served_sqlite(framework: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> typing.Iterator[Served]:
    with serve_example(framework, request, "sqlite", tmp_path) as served:
        yield served


def order(n: int, **changes: typing.Any) -> dict[str, typing.Any]:
    return {**ORDER, "order_id": f"A-{n}", **changes}


def post(served: Served, path: str, body: typing.Any, **headers: str) -> Reply:
    return served.request("POST", path, json_body=body, headers=headers)


def assert_problem(reply: Reply, status: int, fragment: str = "") -> dict[str, typing.Any]:
    assert reply.status == status, reply.text
    assert reply.media_type == "application/problem+json", reply.headers
    problem = reply.json()
    assert problem["status"] == status and problem["type"] == "about:blank" and problem["title"]
    assert fragment in problem["detail"], problem
    return typing.cast(dict[str, typing.Any], problem)


def sse(text: str) -> list[dict[str, typing.Any]]:
    events = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


# -- the service ----------------------------------------------------------------------------------------


def test_an_order_starts_in_the_background_and_the_operator_routes_show_it(served: Served) -> None:
    with capturing("cqrs.integrations") as logs:
        accepted = post(served, "/orders", order(1), **{"X-Correlation-ID": "trace-1"})
    assert accepted.status == 202, accepted.text
    body = accepted.json()
    saga_id = body["saga_id"]
    assert body["order_id"] == "A-1" and body["status"] == "accepted"
    assert body["status_url"] == accepted.headers["location"] == f"/sagas/{saga_id}"
    assert accepted.headers["x-correlation-id"] == "trace-1"
    (record,) = [r for r in logs.records if "accepted" in r.getMessage()]
    assert record.levelno == logging.INFO and saga_id in record.getMessage() and "trace-1" in record.getMessage()

    served.settle()
    status = served.request("GET", body["status_url"]).json()
    assert status["status"] == "completed" and status["correlation_id"] == "trace-1"
    assert [s["step"] for s in status["completed_steps"]] == STEPS
    assert status["owner"] is None and status["recovery_attempts"] == 0 and "lease_expires_at" in status

    history = served.request("GET", f"/sagas/{saga_id}/history").json()["history"]
    assert [(h["step"], h["action"], h["status"]) for h in history] == [(s, "act", "completed") for s in STEPS]
    diagram = served.request("GET", f"/sagas/{saga_id}/diagram")
    assert diagram.status == 200 and diagram.text.startswith("flowchart")
    assert served.request("GET", f"/sagas/{saga_id}/diagram?format=json").json()["diagram"] == diagram.text
    listed = served.request("GET", "/sagas?correlation_id=trace-1").json()
    assert [s["saga_id"] for s in listed["sagas"]] == [saga_id] and listed["next_cursor"] is None
    health = served.request("GET", "/health")
    assert health.status == 200 and health.json()["status"] == "ok"

    again = post(served, "/orders", order(1))
    assert_problem(again, 409)
    assert len(served.stored()) == 1


def test_an_order_run_to_its_end_and_a_declined_one(served: Served) -> None:
    done = post(served, "/orders/wait", order(2))
    assert done.status == 200, done.text
    result = done.json()
    assert result["status"] == "completed" and result["order_id"] == "A-2"
    assert [s["step"] for s in result["completed_steps"]] == STEPS
    assert result["status_url"] == f"/sagas/{result['saga_id']}"

    declined = post(served, "/orders/wait", order(3, amount=20_000)).json()
    assert declined["status"] == "failed" and "PaymentDeclined" in declined["error"]
    status = served.request("GET", declined["status_url"]).json()
    assert status["failed_step"] == "charge_payment" and status["compensated_steps"] == ["reserve_inventory"]
    failed = served.request("GET", "/sagas?status=failed").json()["sagas"]
    assert [s["saga_id"] for s in failed] == [declined["saga_id"]]


def test_an_order_streamed_as_server_sent_events(served_sqlite: Served) -> None:
    streamed = post(served_sqlite, "/orders/stream", order(4))
    assert streamed.status == 200 and streamed.media_type == "text/event-stream"
    events = sse(streamed.text)
    assert [e["type"] for e in events] == ["start", "step_completed", "step_completed", "step_completed", "completed"]
    assert streamed.headers["x-saga-id"] == events[0]["saga_id"]
    served_sqlite.settle()


def test_the_same_validation_everywhere(served_sqlite: Served) -> None:
    for path in BODY_ROUTES:
        refused = assert_problem(post(served_sqlite, path, order(5, amount=-5, items=[])), 422)
        assert sorted(e["field"] for e in refused["errors"]) == ["amount", "items"]
        assert_problem(post(served_sqlite, path, {**order(5), "amount": "lots"}), 422, "amount")
        assert_problem(post(served_sqlite, path, {"order_id": "A-5"}), 422)
        assert_problem(served_sqlite.request("POST", path, content=b"{nope", headers=JSON), 400)
        assert_problem(post(served_sqlite, path, [1, 2]), 400, "JSON object")
    assert served_sqlite.stored() == []


def test_lists_page_with_a_cursor_and_refuse_bad_queries(served_sqlite: Served) -> None:
    ids = {post(served_sqlite, "/orders/wait", order(10 + n)).json()["saga_id"] for n in range(5)}
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = served_sqlite.request("GET", "/sagas?limit=2" + (f"&cursor={cursor}" if cursor else "")).json()
        seen += [s["saga_id"] for s in page["sagas"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    assert len(served_sqlite.request("GET", "/sagas?status=completed&status=failed&name=order").json()["sagas"]) == 5
    assert served_sqlite.request("GET", "/sagas?older_than=1h").json()["sagas"] == []
    for query in ("limit=0", "limit=abc", "limit=999999999", "status=bogus", "older_than=soon",
                  f"cursor={uuid.uuid4()}", "cursor=%00", "name=%00", "limit=1&limit=2"):
        assert_problem(served_sqlite.request("GET", f"/sagas?{query}"), 422)
    assert served_sqlite.request("GET", "/sagas?unknown=1").status == 200


def test_actions_are_not_mounted_without_an_authorisation_hook(served_sqlite: Served) -> None:
    saga_id = post(served_sqlite, "/orders/wait", order(20)).json()["saga_id"]
    for action in ("recover", "park", "reset"):
        reply = served_sqlite.request("POST", f"/sagas/{saga_id}/{action}")
        assert reply.status in (404, 405) and reply.media_type == "application/problem+json"


# -- hostile input --------------------------------------------------------------------------------------

DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
HUGE_INTEGER = b'{"order_id": "A-9", "amount": ' + b"9" * 5000 + b"}"
DEEP_EVENT = json.dumps({**ORDER, "user_id": "U", "extra": json.loads("[" * 900 + "]" * 900)}).encode()
JSON = {"content-type": "application/json"}

HOSTILE_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "5000-digit integer": (HUGE_INTEGER, JSON),
    "100000-deep array": (DEEP_ARRAY, JSON),
    "900-deep value": (DEEP_EVENT, JSON),
    "NUL in a field": (json.dumps(order(30, user_id="a\u0000b")).encode(), JSON),
    "NUL in an item": (json.dumps(order(31, items=[{"sku": "\u0000", "quantity": 1}])).encode(), JSON),
    "lone surrogate": (
        b'{"order_id": "A-32", "user_id": "\\ud800", "items": [{"sku": "b", "quantity": 1}], "amount": 1}', JSON
    ),
    "not UTF-8": (b'{"order_id": "\xff\xfe"}', JSON),
    "NaN": (b'{"order_id": "A-33", "user_id": "U", "items": [{"sku": "b", "quantity": 1}], "amount": NaN}', JSON),
    "overflowing float": (b'{"order_id": "A-34", "user_id": "U", "items": [{"sku": "b", "quantity": 1}], '
                          b'"amount": 1e999}', JSON),
    "over the size limit": (b'{"pad": "' + b"x" * 2_000_000 + b'"}', JSON),
    "bad length": (b"{}", {**JSON, "content-length": "abc"}),
    "no content type": (json.dumps(order(35, amount=-1)).encode(), {}),
    "form data": (b"order_id=A-36", {"content-type": "application/x-www-form-urlencoded"}),
}
HOSTILE_PATHS = [
    "/sagas/%00", "/sagas/%ED%A0%80", "/sagas/%FF%FE", "/sagas/" + "9" * 5000, "/sagas/not-a-uuid/history",
    "/sagas/%00/diagram?format=%00", f"/sagas/{uuid.uuid4()}/diagram?format=svg", "/sagas?limit=" + "9" * 5000,
    "/sagas?status=%00&name=%ED%A0%80", "/sagas?cursor=%FF&correlation_id=" + "x" * 10_000,
]


def test_hostile_bodies_are_4xx_problems_and_store_nothing(served: Served) -> None:
    for path in BODY_ROUTES:
        for case, (content, headers) in HOSTILE_BODIES.items():
            reply = served.request("POST", path, content=content, headers=headers)
            assert 400 <= reply.status < 500, (path, case, reply.status, reply.text[:300])
            assert reply.media_type == "application/problem+json", (path, case, reply.headers)
            assert reply.json()["status"] == reply.status
    for path in HOSTILE_PATHS:
        reply = served.request("GET", path)
        assert 400 <= reply.status < 500 and reply.media_type == "application/problem+json", (path, reply.text[:300])
    unfit = "bad id; <script>" * 50
    weird = served.request("GET", "/health", headers={"X-Correlation-ID": unfit})
    assert weird.status == 200 and weird.headers["x-correlation-id"] != unfit
    assert served.stored() == []
