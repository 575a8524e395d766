"""The Flask integration: both init forms, config keys, run_saga, the shared loop, correlation ids,
status/diagram/health routes, request bodies, shutdown.

Requests go through Flask's test client; sagas run on the process's shared
loop thread, as they do under a real server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import io
import json
import logging
import pathlib
import subprocess
import sys
import threading
import time
import typing
import uuid

import di
import flask
import pytest
from di.dependent import Dependent
from werkzeug.test import EnvironBuilder, run_wsgi_app

from cqrs import correlation
from cqrs.config import open_storage
from cqrs.integrations import _loop
from cqrs.integrations import flask as sagas_api
from cqrs.integrations.flask import (
    SagaExtension,
    SagaResult,
    SagaStillRunning,
    list_sagas,
    operator_routes,
    read_saga_context,
    run_saga,
    saga_status,
)
from cqrs.saga.saga import Saga
from cqrs.saga.storage.enums import SagaStatus
from log_capture import Capture, capturing
from order_saga import (
    STEP_NAMES,
    OrderContext,
    OrderSaga,
    PaymentDeclined,
    Reserve,
    StepProbe,
)

# -- a saga whose steps record what they saw ----------------------------------------------------------


class Probe(StepProbe):
    """Injected into every step: records the loop, correlation id and saga id each step saw.

    A step named in ``hold`` waits (without blocking the loop) until its gate is set.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.threads: list[threading.Thread] = []
        self.correlation_ids: list[str | None] = []
        self.hold: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}

    async def visit(self, step: str) -> None:
        self.loops.append(asyncio.get_running_loop())
        self.threads.append(threading.current_thread())
        self.correlation_ids.append(correlation.get_correlation_id())
        logging.getLogger("tests.flask.steps").info("step %s runs", step)
        self.entered.setdefault(step, threading.Event()).set()
        gate = self.hold.get(step)
        if gate is not None:
            deadline = time.monotonic() + 10
            while not gate.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)




def container_for(probe: Probe) -> di.Container:
    container = di.Container()
    container.bind(di.bind_by_type(Dependent(lambda: probe, scope=None), StepProbe))
    return container


# -- the app under test ----------------------------------------------------------------------------


def add_views(app: flask.Flask, ext: SagaExtension) -> None:
    """The views a user writes: the seed's shape, plus variants the tests need."""

    @app.post("/orders")
    def create_order() -> tuple[dict[str, typing.Any], int]:
        context = read_saga_context(OrderContext)
        logging.getLogger("tests.flask.view").info("order %s", context.order_id)
        timeout = flask.request.args.get("timeout", type=float)
        result = run_saga(OrderSaga, context, timeout=timeout)
        return {"saga_id": result["saga_id"], **result.to_dict()}, 201 if result.succeeded else 422

    @app.post("/orders/raw")
    def create_order_from_dict() -> dict[str, typing.Any]:
        result = run_saga(OrderSaga, flask.request.get_json())
        return result.to_dict()


@dataclasses.dataclass
class Served:
    app: flask.Flask
    ext: SagaExtension
    probe: Probe
    client: flask.testing.FlaskClient

    def sagas(self) -> list[typing.Any]:
        runtime = self.ext.runtime(self.app)

        async def listed() -> list[typing.Any]:
            return await (await runtime.open()).storage.list_sagas(limit=1000)

        return _loop.block(listed())


@pytest.fixture
def make_app() -> typing.Iterator[typing.Callable[..., Served]]:
    extensions: list[SagaExtension] = []

    def make(*, factory: bool = False, routes: bool = True, **config: typing.Any) -> Served:
        probe = Probe()
        app = flask.Flask(__name__)
        app.config["CQRS_SAGA_STORAGE_URL"] = "memory://"
        app.config["CQRS_SAGA_MAX_BODY_BYTES"] = 256
        app.config["CQRS_SAGA_COMPENSATION_RETRY_DELAY"] = 0.0
        app.config.update(config)
        if factory:
            ext = SagaExtension(sagas=[OrderSaga])
            ext.init_app(app, container=container_for(probe))
        else:
            ext = SagaExtension(app, sagas=[OrderSaga], container=container_for(probe))
        extensions.append(ext)
        add_views(app, ext)
        if routes:
            app.register_blueprint(operator_routes())
        return Served(app, ext, probe, app.test_client())

    yield make
    for ext in extensions:
        ext.close()


def order(n: int = 1, **extra: typing.Any) -> dict[str, typing.Any]:
    return {"order_id": f"O-{n}", "amount": 10.0 + n, **extra}


# -- setting up ------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [False, True], ids=["SagaExtension(app)", "init_app(app)"])
def test_both_init_forms_register_and_run(make_app: typing.Callable[..., Served], factory: bool) -> None:
    served = make_app(factory=factory)
    assert served.app.extensions["cqrs_saga"] is served.ext

    response = served.client.post("/orders", json=order())

    assert response.status_code == 201, response.json
    assert response.json is not None and response.json["status"] == "completed"
    assert [s.status for s in served.sagas()] == [SagaStatus.COMPLETED]


def test_one_extension_serves_several_apps_with_their_own_storage() -> None:
    probe = Probe()
    ext = SagaExtension(sagas=[OrderSaga], container=container_for(probe))
    first, second = flask.Flask("first"), flask.Flask("second")
    first.config["CQRS_SAGA_CORRELATION_HEADER"] = "X-First"
    ext.init_app(first)
    ext.init_app(second)
    try:
        add_views(first, ext)
        add_views(second, ext)
        assert first.test_client().post("/orders", json=order(1)).headers["X-First"]
        assert second.test_client().post("/orders", json=order(2)).headers["X-Correlation-ID"]
        assert ext.config(first) is not ext.config(second)
        for app, order_id in ((first, "O-1"), (second, "O-2")):
            with app.app_context():
                records = list_sagas()["sagas"]
                assert [r["status"] for r in records] == ["completed"]
                assert saga_status(records[0]["saga_id"])["context"]["order_id"] == order_id
        with pytest.raises(RuntimeError, match="app context"):
            ext.config()
    finally:
        ext.close()


def test_registering_twice_on_one_app_is_an_error(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    with pytest.raises(RuntimeError, match="already registered"):
        SagaExtension(served.app)


def test_config_keys_are_read_with_the_prefix(make_app: typing.Callable[..., Served]) -> None:
    served = make_app(
        CQRS_SAGA_CORRELATION_HEADER="X-Request-ID",
        CQRS_SAGA_COMPENSATION_RETRY_COUNT="5",
        CQRS_SAGA_COMPENSATION_RETRY_BACKOFF=1.5,
        CQRS_SAGA_LEASE_SECONDS="12.5",
        CQRS_SAGA_MAX_BODY_BYTES="64",
        OTHER_SETTING="not ours",
    )
    config = served.ext.config(served.app)
    assert config.storage_url == "memory://"
    assert config.correlation_header == "X-Request-ID"
    assert config.compensation_retry_count == 5
    assert config.compensation_retry_backoff == 1.5
    assert config.lease_seconds == 12.5
    assert config.max_body_bytes == 64
    assert config.engine_settings.compensation_retry.attempts == 5

    response = served.client.post("/orders", json=order(), headers={"X-Request-ID": "req-1"})
    assert response.status_code == 201
    assert response.headers["X-Request-ID"] == "req-1"
    assert "X-Correlation-ID" not in response.headers
    big = served.client.post("/orders", json=order(extra="x" * 100))
    assert big.status_code == 413


def test_keyword_settings_and_a_custom_prefix() -> None:
    app = flask.Flask(__name__)
    app.config["SAGAS_STORAGE_URL"] = "sqlite+aiosqlite:///never-opened.db"
    app.config["SAGAS_LEASE_SECONDS"] = "7"
    ext = SagaExtension(app, prefix="SAGAS_", sagas=[OrderSaga], storage_url="memory://")
    try:
        assert ext.config().storage_url == "memory://"  # keyword settings win over app.config
        assert ext.config().lease_seconds == 7.0
    finally:
        ext.close()


def test_an_unknown_config_key_is_an_error() -> None:
    app = flask.Flask(__name__)
    app.config["CQRS_SAGA_STORAGE_ULR"] = "memory://"
    with pytest.raises(ValueError, match=r"CQRS_SAGA_STORAGE_ULR.*did you mean CQRS_SAGA_STORAGE_URL\?"):
        SagaExtension(app, sagas=[OrderSaga])
    app.config.pop("CQRS_SAGA_STORAGE_ULR")
    app.config["CQRS_SAGA_LEASE_SECONDS"] = "soon"
    with pytest.raises(ValueError, match="LEASE_SECONDS must be a positive number, got 'soon'"):
        SagaExtension(app, sagas=[OrderSaga])
    assert "cqrs_saga" not in app.extensions


def test_the_storage_opens_on_first_use_and_closes(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    runtime = served.ext.runtime(served.app)
    assert not runtime.opened
    served.ext.initialize(served.app)
    storage = runtime.storage
    served.ext.initialize(served.app)
    assert runtime.opened and runtime.storage is storage  # once per process

    served.ext.close()
    assert not runtime.opened and runtime.closed
    served.ext.close()  # idempotent
    with pytest.raises(RuntimeError, match="shut down"):
        served.ext.initialize(served.app)


# -- run_saga --------------------------------------------------------------------------------------


def test_run_saga_returns_id_status_and_step_results(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    with served.app.app_context():
        result = run_saga(OrderSaga, OrderContext(order_id="A", amount=3.0))

    assert isinstance(result, SagaResult)
    assert result.status is SagaStatus.COMPLETED and result["status"] is SagaStatus.COMPLETED
    assert result.succeeded and result.error is None
    assert isinstance(result.saga_id, uuid.UUID) and result["saga_id"] == result.saga_id
    assert [r.step_type.name for r in result.results] == STEP_NAMES
    assert result.steps == {
        "reserve": {"reservation_id": "res-A"},
        "charge": {"payment_id": "pay-A"},
        "ship": {"tracking": "trk-A"},
    }
    assert result["steps"] == result.steps
    with pytest.raises(KeyError):
        result["nope"]
    assert json.loads(json.dumps(result.to_dict()))["saga_id"] == str(result.saga_id)

    # The seed's view: jsonify({"saga_id": result["saga_id"]}).
    body = served.client.post("/orders", json=order(7)).json
    assert body is not None
    assert uuid.UUID(body["saga_id"])
    assert body["completed_steps"] == [
        {"step": "reserve", "response": {"reservation_id": "res-O-7"}},
        {"step": "charge", "response": {"payment_id": "pay-O-7"}},
        {"step": "ship", "response": {"tracking": "trk-O-7"}},
    ]


def test_run_saga_outside_a_request_with_a_context_or_a_saga_class(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    with served.app.app_context():  # no request: a fresh correlation id
        result = run_saga(OrderContext(order_id="B", amount=1.0))
        again = run_saga(OrderSaga, {"order_id": "C", "amount": 2})
    assert result.status is SagaStatus.COMPLETED
    assert again.status is SagaStatus.COMPLETED and again.correlation_id


def test_a_failing_step_is_a_result_not_an_exception(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    response = served.client.post("/orders", json=order(fail_payment=True))
    assert response.status_code == 422
    body = response.json
    assert body is not None
    assert body["status"] == "failed"
    assert body["error"].startswith("PaymentDeclined: card declined")
    assert served.probe.compensated == ["reserve"]
    with served.app.app_context():
        result = run_saga(OrderSaga, OrderContext(order_id="D", amount=1, fail_payment=True))
    assert isinstance(result.error, PaymentDeclined)
    assert result.status is SagaStatus.FAILED


def test_a_mapping_context_is_validated(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    ok = served.client.post("/orders/raw", json={"order_id": "E", "amount": "4.5"})
    assert ok.status_code == 200 and ok.json is not None and ok.json["status"] == "completed"
    bad = served.client.post("/orders/raw", json={"order_id": "E"})
    assert bad.status_code == 422 and bad.content_type == "application/problem+json"
    assert bad.json is not None and bad.json["errors"][0]["field"] == "amount"
    with served.app.app_context(), pytest.raises(TypeError, match="does not run on list"):
        run_saga(OrderSaga, ["not", "a", "context"])


def test_a_saga_the_config_does_not_list_is_refused() -> None:
    """Recovery finishes only the sagas the config lists, so none other is started."""

    class OtherOrderSaga(Saga[OrderContext]):
        name = "other-order"
        steps = [Reserve]

    probe = Probe()
    app = flask.Flask(__name__)
    ext = SagaExtension(app, container=container_for(probe))
    try:
        with app.app_context():
            with pytest.raises(RuntimeError, match="not among the app's sagas"):
                run_saga(OtherOrderSaga, OrderContext(order_id="F", amount=1))
            with pytest.raises(RuntimeError, match="No saga of the app runs on OrderContext"):
                run_saga(OrderContext(order_id="F", amount=1))
    finally:
        ext.close()


def test_one_long_lived_loop_serves_every_request(
    make_app: typing.Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    served = make_app()
    served.ext.initialize(served.app)
    created: list[asyncio.AbstractEventLoop] = []
    closed: list[asyncio.AbstractEventLoop] = []
    new_event_loop, close = asyncio.new_event_loop, asyncio.BaseEventLoop.close

    def counting_new_event_loop() -> asyncio.AbstractEventLoop:
        loop = new_event_loop()
        created.append(loop)
        return loop

    def counting_close(self: asyncio.BaseEventLoop) -> None:
        closed.append(self)
        close(self)

    monkeypatch.setattr(asyncio, "new_event_loop", counting_new_event_loop)
    monkeypatch.setattr(asyncio.BaseEventLoop, "close", counting_close)

    assert served.client.post("/orders", json=order(1)).status_code == 201
    assert served.client.post("/orders", json=order(2)).status_code == 201

    def request(n: int) -> int:
        return served.client.post("/orders", json=order(n)).status_code

    threads = [threading.Thread(target=lambda n=n: codes.append(request(n))) for n in range(3, 11)]
    codes: list[int] = []
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert codes == [201] * 8
    shared = _loop.shared_loop_thread().loop
    assert len(served.probe.loops) == 30
    assert all(loop is shared for loop in served.probe.loops)
    assert {t.name for t in served.probe.threads} == {"cqrs-saga-loop"}
    assert created == [] and closed == []
    assert shared.is_running() and not shared.is_closed()


def test_a_saga_outlives_a_request_that_stops_waiting(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    gate = served.probe.hold["charge"] = threading.Event()

    response = served.client.post("/orders?timeout=0.2", json=order())

    assert response.status_code == 202
    body = response.json
    assert body is not None and body["status"] == "running"
    saga_id = body["saga_id"]
    assert response.headers["Location"] == body["status_url"] == f"/sagas/{saga_id}"
    assert served.client.get(f"/sagas/{saga_id}").json["status"] == "running"  # type: ignore[index]
    gate.set()
    deadline = time.monotonic() + 10
    while served.client.get(f"/sagas/{saga_id}").json["status"] != "completed":  # type: ignore[index]
        assert time.monotonic() < deadline, "the saga did not finish after its request gave up"
        time.sleep(0.01)
    assert served.probe.entered["ship"].is_set()


def test_run_saga_timeout_raises_with_the_saga_id_and_a_used_id_is_409(
    make_app: typing.Callable[..., Served],
) -> None:
    served = make_app()
    gate = served.probe.hold["reserve"] = threading.Event()
    saga_id = uuid.uuid4()
    with served.app.app_context():
        with pytest.raises(SagaStillRunning) as caught:
            run_saga(OrderSaga, OrderContext(order_id="G", amount=1), saga_id=saga_id, timeout=0.05)
        assert caught.value.saga_id == saga_id and caught.value.status_url == f"/sagas/{saga_id}"
        with pytest.raises(sagas_api.Problem, match="already used") as conflict:
            run_saga(OrderSaga, OrderContext(order_id="G", amount=1), saga_id=saga_id)
        assert conflict.value.status == 409
    gate.set()
    assert served.ext.wait_for_sagas(10, app=served.app)
    assert [r.status for r in served.sagas()] == [SagaStatus.COMPLETED]


def test_close_waits_for_running_sagas(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    gate = served.probe.hold["ship"] = threading.Event()
    with served.app.app_context(), pytest.raises(SagaStillRunning) as caught:
        run_saga(OrderSaga, OrderContext(order_id="H", amount=1), timeout=0.05)
    runtime = served.ext.runtime(served.app)
    storage = runtime.storage
    threading.Timer(0.2, gate.set).start()

    served.ext.close()

    record = _loop.shared_loop_thread().run(storage.get_saga(caught.value.saga_id))
    assert record is not None and record.status is SagaStatus.COMPLETED
    assert not runtime.opened


def test_close_cancels_sagas_running_past_the_grace(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    served.ext.runtime(served.app).shutdown_grace = 0.1
    served.probe.hold["charge"] = threading.Event()  # never set
    with served.app.app_context(), pytest.raises(SagaStillRunning) as caught:
        run_saga(OrderSaga, OrderContext(order_id="I", amount=1), timeout=0.05)
    storage = served.ext.runtime(served.app).storage

    served.ext.close()

    # Cancelled: nothing more written; the saga stays running, for recovery to finish.
    record = _loop.shared_loop_thread().run(storage.get_saga(caught.value.saga_id))
    assert record is not None and record.status is SagaStatus.RUNNING


# -- correlation ids ---------------------------------------------------------------------------------


@pytest.fixture
def captured_logs() -> typing.Iterator[Capture]:
    with capturing("tests.flask") as handler:
        yield handler


def test_an_incoming_correlation_id_is_echoed_stored_and_logged(
    make_app: typing.Callable[..., Served], captured_logs: Capture
) -> None:
    served = make_app()
    response = served.client.post("/orders", json=order(), headers={"X-Correlation-ID": "trace-123"})

    assert response.status_code == 201
    assert response.headers["X-Correlation-ID"] == "trace-123"
    body = response.json
    assert body is not None and body["correlation_id"] == "trace-123"
    assert served.probe.correlation_ids == ["trace-123"] * 3
    [record] = served.sagas()
    assert record.correlation_id == "trace-123"
    status = served.client.get(f"/sagas/{body['saga_id']}").json
    assert status is not None and status["correlation_id"] == "trace-123"

    steps = [r for r in captured_logs.records if r.name == "tests.flask.steps"]
    assert [r.getMessage() for r in steps] == [f"step {s} runs" for s in STEP_NAMES]
    assert {(r.correlation_id, r.saga_id, r.threadName) for r in steps} == {  # type: ignore[attr-defined]
        ("trace-123", body["saga_id"], "cqrs-saga-loop")
    }
    [view] = [r for r in captured_logs.records if r.name == "tests.flask.view"]
    assert view.correlation_id == "trace-123"  # type: ignore[attr-defined]
    assert correlation.get_correlation_id() is None  # reset after the request


def test_a_correlation_id_is_generated_when_missing_or_unfit(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    first = served.client.post("/orders", json=order(1))
    generated = first.headers["X-Correlation-ID"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert served.probe.correlation_ids == [generated] * 3
    second = served.client.get("/health", headers={"X-Correlation-ID": "bad\x01id" + "x" * 200})
    assert second.headers["X-Correlation-ID"] not in (generated, "")
    assert "\x01" not in second.headers["X-Correlation-ID"]
    by_id = {r.context["order_id"]: r.correlation_id for r in served.sagas()}
    assert by_id == {"O-1": generated}
    # Errors are answered with the id too.
    assert served.client.get("/sagas/nope", headers={"X-Correlation-ID": "e-1"}).headers["X-Correlation-ID"] == "e-1"


# -- routes ------------------------------------------------------------------------------------------


def test_status_route_reports_steps_failure_and_404(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    done = served.client.post("/orders", json=order(1)).json
    failed = served.client.post("/orders", json=order(2, fail_payment=True)).json
    assert done is not None and failed is not None

    status = served.client.get(f"/sagas/{done['saga_id']}").json
    assert status is not None
    assert status["status"] == "completed" and status["saga"] == "order"
    assert [(s["step"], s["response"]) for s in status["completed_steps"]] == [
        ("reserve", {"reservation_id": "res-O-1"}),
        ("charge", {"payment_id": "pay-O-1"}),
        ("ship", {"tracking": "trk-O-1"}),
    ]
    assert status["failed_step"] is None and status["error"] is None

    status = served.client.get(f"/sagas/{failed['saga_id']}").json
    assert status is not None
    assert status["status"] == "failed"
    assert status["failed_step"] == "charge"
    assert "card declined" in status["error"]
    assert status["compensated_steps"] == ["reserve"]

    missing = served.client.get(f"/sagas/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.content_type == "application/problem+json"
    assert "No saga with id" in missing.json["detail"]  # type: ignore[index]
    malformed = served.client.get("/sagas/not-a-uuid")
    assert malformed.status_code == 422 and malformed.content_type == "application/problem+json"
    assert "not a saga id" in malformed.json["detail"]  # type: ignore[index]


def test_diagram_route(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    failed = served.client.post("/orders", json=order(fail_payment=True)).json
    assert failed is not None

    text = served.client.get(f"/sagas/{failed['saga_id']}/diagram")
    assert text.status_code == 200 and text.mimetype == "text/plain"
    diagram = text.get_data(as_text=True)
    assert diagram.startswith("flowchart")
    assert "reserve" in diagram and "charge" in diagram

    as_json = served.client.get(f"/sagas/{failed['saga_id']}/diagram?format=json").json
    assert as_json == {"saga_id": failed["saga_id"], "status": "failed", "diagram": diagram}
    assert served.client.get(f"/sagas/{failed['saga_id']}/diagram?format=svg").status_code == 422
    missing = served.client.get(f"/sagas/{uuid.uuid4()}/diagram")
    assert missing.status_code == 404 and missing.is_json
    assert served.client.get("/sagas/123/diagram").status_code == 422


def test_health_route_and_custom_paths(make_app: typing.Callable[..., Served]) -> None:
    served = make_app(routes=False)
    served.app.register_blueprint(operator_routes(prefix="/admin/sagas/", health="/ready", name="saga_admin"))
    health = served.client.get("/ready")
    assert health.status_code == 200 and health.json is not None and health.json["status"] == "ok"
    assert served.client.get("/health").status_code == 404
    done = served.client.post("/orders", json=order()).json
    assert done is not None
    assert served.client.get(f"/admin/sagas/{done['saga_id']}").json["status"] == "completed"  # type: ignore[index]


def test_health_is_503_when_the_storage_cannot_open(
    make_app: typing.Callable[..., Served], tmp_path: pathlib.Path
) -> None:
    served = make_app(CQRS_SAGA_STORAGE_URL=f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'dir' / 'db.sqlite3'}")
    response = served.client.get("/health")
    assert response.status_code == 503 and response.content_type == "application/problem+json"
    assert response.json is not None and "The saga storage is unavailable" in response.json["detail"]


def test_a_storage_url_no_storage_takes_is_refused_at_start() -> None:
    app = flask.Flask(__name__)
    app.config["CQRS_SAGA_STORAGE_URL"] = "oracle://nowhere/db"
    with pytest.raises(ValueError, match="Unsupported saga storage URL"):
        SagaExtension(app, sagas=[OrderSaga])


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"order_id=1&amount=2", "application/x-www-form-urlencoded", "not valid JSON"),
        (b"{not json", "application/json", "not valid JSON"),
        (b"", "application/json", "not valid JSON"),
        (b"[1, 2]", "application/json", "must be a JSON object, got list"),
        (b'{"amount": 3}', "application/json", "order_id: Field required"),
        (b'{"order_id": "X", "amount": "lots"}', "application/json", "amount: Input should be a valid number"),
        (b'{"order_id": ["X"], "amount": 1}', "application/json", "order_id: Input should be a valid string"),
    ],
)
def test_bad_bodies_are_400_naming_the_problem(
    make_app: typing.Callable[..., Served], body: bytes, content_type: str, message: str
) -> None:
    served = make_app()
    response = served.client.post("/orders", data=body, content_type=content_type)
    assert response.status_code == (422 if ":" in message else 400)
    assert response.content_type == "application/problem+json" and response.json is not None
    assert message in response.json["detail"]
    assert response.headers["X-Correlation-ID"]
    assert served.sagas() == []
    assert served.probe.loops == []


def test_bad_fields_are_listed_in_details(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    response = served.client.post("/orders", json={"amount": "lots", "fail_payment": "maybe"})
    assert response.status_code == 422 and response.json is not None
    assert {d["field"] for d in response.json["errors"]} == {"order_id", "amount", "fail_payment"}


def test_an_oversized_body_is_413(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()  # CQRS_SAGA_MAX_BODY_BYTES = 256
    response = served.client.post("/orders", json=order(note="x" * 300))
    assert response.status_code == 413 and response.content_type == "application/problem+json"
    assert "256" in response.json["detail"]  # type: ignore[index]
    # Without a Content-Length (a chunked upload), the bytes read are counted.
    environ = EnvironBuilder("/orders", method="POST", input_stream=io.BytesIO(b"{" + b" " * 400 + b"}")).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input_terminated"] = True
    app_iter, status, _ = run_wsgi_app(served.app, environ, buffered=True)
    assert status.startswith("413")
    assert "over the limit of 256 bytes" in json.loads(b"".join(app_iter))["detail"]
    environ = EnvironBuilder("/orders", method="POST", input_stream=io.BytesIO(b"{}")).get_environ()
    environ["CONTENT_LENGTH"] = "many"  # the test client would send the real length
    _, status, _ = run_wsgi_app(served.app, environ, buffered=True)
    assert status.startswith("400")
    assert served.sagas() == []


def test_read_saga_context_takes_its_own_limit(make_app: typing.Callable[..., Served]) -> None:
    served = make_app()
    body = json.dumps(order()).encode()
    with served.app.test_request_context("/", method="POST", data=body, content_type="application/json"):
        assert read_saga_context(OrderContext).order_id == "O-1"
    with served.app.test_request_context("/", method="POST", data=body, content_type="application/json"):
        with pytest.raises(Exception, match=r"limit of 10 bytes|limit is 10") as caught:
            read_saga_context(OrderContext, max_bytes=10)
        assert getattr(caught.value, "status", None) == 413


# -- SQL storages --------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sql_storage_end_to_end(
    make_app: typing.Callable[..., Served], request: pytest.FixtureRequest, database: str
) -> None:
    url = request.getfixturevalue(f"{database}_url")
    served = make_app(CQRS_SAGA_STORAGE_URL=url)
    response = served.client.post("/orders", json=order(), headers={"X-Correlation-ID": "sql-1"})
    assert response.status_code == 201, response.json
    saga_id = response.json["saga_id"]  # type: ignore[index]
    failed = served.client.post("/orders", json=order(2, fail_payment=True)).json
    assert failed is not None and failed["status"] == "failed"
    status = served.client.get(f"/sagas/{saga_id}").json
    assert status is not None and status["status"] == "completed" and status["correlation_id"] == "sql-1"
    assert [s["step"] for s in status["completed_steps"]] == STEP_NAMES
    diagram = served.client.get(f"/sagas/{failed['saga_id']}/diagram").get_data(as_text=True)
    assert "step_charge" in diagram and "compensated" in diagram and "failed" in diagram
    assert served.client.get("/health").json["status"] == "ok"  # type: ignore[index]
    assert {(r.context["order_id"], r.status) for r in served.sagas()} == {
        ("O-1", SagaStatus.COMPLETED),
        ("O-2", SagaStatus.FAILED),
    }
    served.ext.close()
    assert not served.ext.runtime(served.app).opened


EXIT_SCRIPT = """
import asyncio, dataclasses, sys
import flask
import cqrs
from cqrs.integrations.flask import SagaExtension, SagaStillRunning, run_saga
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult

@dataclasses.dataclass
class Ctx(SagaContext):
    n: int

class Done(cqrs.Response):
    n: int

class Slow(SagaStepHandler[Ctx, Done]):
    name = "slow"
    async def act(self, context: Ctx) -> SagaStepResult[Ctx, Done]:
        await asyncio.sleep(0.5)
        return self._generate_step_result(Done(n=context.n))

class SlowSaga(Saga[Ctx]):
    steps = [Slow]

app = flask.Flask("exit")
app.config["CQRS_SAGA_STORAGE_URL"] = sys.argv[1]
ext = SagaExtension(app, sagas=[SlowSaga])
try:
    with app.app_context():
        run_saga(SlowSaga, Ctx(n=1), timeout=0.05)
except SagaStillRunning as error:
    print(error.saga_id)
# no ext.close(): the atexit hook waits for the saga, then closes the storage
"""


def test_at_exit_running_sagas_finish_and_the_storage_closes(tmp_path: pathlib.Path, sqlite_url: str) -> None:
    script = tmp_path / "exit_app.py"
    script.write_text(EXIT_SCRIPT)
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script), sqlite_url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    saga_id = uuid.UUID(done.stdout.strip())

    async def read() -> typing.Any:
        storage = await open_storage(sqlite_url, create_tables=False)
        try:
            return await storage.get_saga(saga_id)
        finally:
            await storage.close()

    record = asyncio.run(read())
    assert record is not None and record.status is SagaStatus.COMPLETED


# -- packaging ---------------------------------------------------------------------------------------


def test_missing_flask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flask", None)
    monkeypatch.delitem(sys.modules, "cqrs.integrations.flask")
    with pytest.raises(ImportError, match=r"pip install 'cqrs-saga\[flask\]'"):
        importlib.import_module("cqrs.integrations.flask")
