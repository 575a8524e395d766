"""The FastAPI integration: lifespan, dependencies, middleware, SSE, background runs, routes, bad input.

Most tests run the app in the test's own event loop (the ASGI lifespan driven
by hand, requests through httpx's ASGITransport), so steps can wait on
asyncio events the test controls: nothing here sleeps to let something happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib
import json
import logging
import sys
import typing
import uuid

import di
import fastapi
import httpx
import pytest
from di.dependent import Dependent
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request

import cqrs
from cqrs import correlation
from cqrs.config import SagaConfig
from cqrs.integrations import fastapi as saga_api
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.memory import MemorySagaStorage
from log_capture import Capture, capturing
from order_saga import (
    STEP_NAMES,
    OrderContext,
    OrderSaga,
    StepProbe,
)

# -- a saga whose steps the tests can hold and watch -----------------------------------------------


class Probe(StepProbe):
    """Injected into every step: records what steps saw, and lets a test hold a step."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: set[str] = set()
        self.entered: dict[str, asyncio.Event] = {}
        self.release: dict[str, asyncio.Event] = {}
        self.correlation_ids: list[str | None] = []

    def event(self, table: dict[str, asyncio.Event], step: str) -> asyncio.Event:
        return table.setdefault(step, asyncio.Event())

    async def visit(self, step: str) -> None:
        self.correlation_ids.append(correlation.get_correlation_id())
        logging.getLogger("tests.fastapi.steps").info("step %s runs", step)
        self.event(self.entered, step).set()
        if step in self.hold:
            await self.event(self.release, step).wait()



# -- the app under test ----------------------------------------------------------------------------


def make_config(probe: Probe, **options: typing.Any) -> SagaConfig:
    container = di.Container()
    container.bind(di.bind_by_type(Dependent(lambda: probe, scope=None), StepProbe))
    options.setdefault("storage_url", "memory://")
    options.setdefault("max_body_bytes", 256)
    options.setdefault("compensation_retry_delay", 0.0)
    return SagaConfig(sagas=[OrderSaga], container=container, **options)


Order = typing.Annotated[OrderContext, fastapi.Depends(saga_api.saga_context(OrderContext))]
Mediator = typing.Annotated[cqrs.SagaMediator, fastapi.Depends(saga_api.get_mediator)]
Storage = typing.Annotated[typing.Any, fastapi.Depends(saga_api.get_storage)]
Config = typing.Annotated[SagaConfig, fastapi.Depends(saga_api.get_config)]


def make_app(config: SagaConfig, *, middleware: bool = True, **lifespan: typing.Any) -> fastapi.FastAPI:
    if middleware:  # the whole integration: lifespan, middleware, problem answers
        app = fastapi.FastAPI(lifespan=lifespan.pop("lifespan", None))
        saga_api.init_app(app, config, **lifespan)
    else:
        app = fastapi.FastAPI(lifespan=saga_api.create_lifespan(config, **lifespan))
    app.include_router(saga_api.operator_routes(prefix="/sagas"))

    @app.post("/orders", status_code=202)
    async def create_order(request: Request, order: Order) -> dict[str, str]:
        logging.getLogger("tests.fastapi.endpoint").info("accepting order %s", order.order_id)
        return {"saga_id": str(await saga_api.start_saga(request, order))}

    @app.post("/orders/stream")
    async def stream_order(request: Request, order: Order) -> fastapi.responses.StreamingResponse:
        return await saga_api.saga_event_stream(request, order)

    @app.post("/orders/inline")
    async def run_inline(order: Order, mediator: Mediator, storage: Storage) -> dict[str, typing.Any]:
        outcome = await mediator.run(order)
        record = await storage.get_saga(outcome.saga_id)
        return {"saga_id": str(outcome.saga_id), "status": outcome.status.value, "stored": record.status.value}

    @app.get("/config")
    async def show_config(config: Config) -> dict[str, typing.Any]:
        return {"id": id(config), "header": config.correlation_header, "open": True}

    return app


class Lifespan:
    """Drives an app's ASGI lifespan by hand, in the test's event loop, as a server does.

    `transport` hands requests to the app with a copy of the lifespan state, as servers do.
    """

    def __init__(self, app: fastapi.FastAPI) -> None:
        self.app = app
        self.state: dict[str, typing.Any] = {}
        self._to_app: asyncio.Queue[dict[str, typing.Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[typing.MutableMapping[str, typing.Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        self._task = asyncio.ensure_future(self.app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._from_app.get()
        assert message["type"] == "lifespan.startup.complete", message

    async def shutdown(self) -> None:
        assert self._task is not None
        await self._to_app.put({"type": "lifespan.shutdown"})
        message = await self._from_app.get()
        assert message["type"] == "lifespan.shutdown.complete", message
        await self._task

    def transport(self) -> httpx.ASGITransport:
        async def with_state(scope: typing.Any, receive: typing.Any, send: typing.Any) -> None:
            await self.app({**scope, "state": dict(self.state)}, receive, send)

        return httpx.ASGITransport(app=with_state)


@contextlib.asynccontextmanager
async def serve(app: fastapi.FastAPI) -> typing.AsyncIterator[httpx.AsyncClient]:
    lifespan = Lifespan(app)
    await lifespan.startup()
    try:
        async with httpx.AsyncClient(transport=lifespan.transport(), base_url="http://app") as client:
            yield client
    finally:
        await lifespan.shutdown()


def runtime(app: fastapi.FastAPI) -> saga_api.SagaRuntime:
    value = app.state.saga
    assert isinstance(value, saga_api.SagaRuntime)
    return value


def parse_sse(text: str) -> list[tuple[str, dict[str, typing.Any]]]:
    """(event name, data) pairs of an SSE body; comments are skipped."""
    events = []
    for block in text.split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        if name is not None:
            payload = json.loads("\n".join(data))
            assert payload["type"] == name
            events.append((name, payload))
    return events


ORDER = {"order_id": "A-1", "amount": 10.0}
DECLINED = {"order_id": "A-2", "amount": 99.0, "fail_payment": True}


# -- lifespan --------------------------------------------------------------------------------------


async def test_lifespan_opens_storage_at_startup_and_closes_it_at_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[MemorySagaStorage] = []

    async def close(self: MemorySagaStorage) -> None:
        closed.append(self)

    monkeypatch.setattr(MemorySagaStorage, "close", close)
    config = make_config(Probe())
    app = make_app(config)
    assert not hasattr(app.state, "saga")
    async with serve(app) as client:
        storage = runtime(app).storage
        assert isinstance(storage, MemorySagaStorage)
        body = (await client.get("/config")).json()
        assert body == {"id": id(config), "header": "X-Correlation-ID", "open": True}
        assert not closed
    assert closed == [storage]
    assert not hasattr(app.state, "saga")


async def test_lifespan_composes_with_the_users_own_lifespan() -> None:
    seen: list[str] = []
    config = make_config(Probe())

    @contextlib.asynccontextmanager
    async def mine(app: fastapi.FastAPI) -> typing.AsyncIterator[dict[str, str]]:
        # The saga storage is open for the whole of the user's lifespan.
        seen.append(f"start open={runtime(app).opened}")
        yield {"greeting": "hello"}
        seen.append(f"stop open={runtime(app).opened}")

    app = make_app(config, lifespan=mine)

    @app.get("/greeting")
    async def greeting(request: Request) -> dict[str, str]:
        return {"greeting": request.state.greeting}

    async with serve(app) as client:
        assert (await client.get("/greeting")).json() == {"greeting": "hello"}
        assert (await client.post("/orders/inline", json=ORDER)).json()["status"] == "completed"
    assert seen == ["start open=True", "stop open=True"]
    assert not hasattr(app.state, "saga")


async def test_saga_lifespan_inside_a_hand_written_lifespan() -> None:
    config = make_config(Probe())

    @contextlib.asynccontextmanager
    async def mine(app: fastapi.FastAPI) -> typing.AsyncIterator[None]:
        async with saga_api.saga_lifespan(app, config) as state:
            assert state.config is config
            yield

    app = fastapi.FastAPI(lifespan=mine)

    @app.post("/orders/inline")
    async def run_inline(order: Order, mediator: Mediator) -> dict[str, str]:
        return {"status": (await mediator.run(order)).status.value}

    async with serve(app) as client:
        assert (await client.post("/orders/inline", json=ORDER)).json() == {"status": "completed"}
    assert not hasattr(app.state, "saga")


async def test_lifespan_uses_the_globally_configured_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import cqrs.config

    config = make_config(Probe())
    monkeypatch.setattr(cqrs.config, "_global", config)
    app = fastapi.FastAPI(lifespan=saga_api.create_lifespan())

    @app.get("/config")
    async def show_config(found: Config) -> dict[str, bool]:
        return {"same": found is config}

    async with serve(app) as client:
        assert (await client.get("/config")).json() == {"same": True}


async def test_shutdown_waits_for_background_runs() -> None:
    probe = Probe()
    probe.hold.add("ship")
    config = make_config(probe)
    app = make_app(config)
    lifespan = Lifespan(app)
    await lifespan.startup()
    async with httpx.AsyncClient(transport=lifespan.transport(), base_url="http://app") as client:
        saga_id = uuid.UUID((await client.post("/orders", json=ORDER)).json()["saga_id"])
    await probe.event(probe.entered, "ship").wait()
    storage = runtime(app).storage

    shutdown = asyncio.ensure_future(lifespan.shutdown())
    for _ in range(100):  # let the loop run: shutdown gets as far as it can without the saga
        await asyncio.sleep(0)
    assert not shutdown.done()
    assert runtime(app).opened  # not closed under the running saga

    probe.event(probe.release, "ship").set()
    await shutdown
    record = await storage.get_saga(saga_id)
    assert record is not None and record.status == SagaStatus.COMPLETED
    assert not hasattr(app.state, "saga")


async def test_runs_past_the_shutdown_grace_are_left_recoverable_and_recovery_finishes_them() -> None:
    now = [datetime.datetime.now(datetime.timezone.utc)]
    storage = MemorySagaStorage(clock=lambda: now[0])
    probe = Probe()
    probe.hold.add("charge")
    app = make_app(make_config(probe, storage=storage), shutdown_grace=0.01)
    lifespan = Lifespan(app)
    await lifespan.startup()
    async with httpx.AsyncClient(transport=lifespan.transport(), base_url="http://app") as client:
        saga_id = uuid.UUID((await client.post("/orders", json=ORDER)).json()["saga_id"])
    await probe.event(probe.entered, "charge").wait()
    await lifespan.shutdown()  # the held step outlives the grace: the run is cancelled, as if the process died

    record = await storage.get_saga(saga_id)
    assert record is not None and record.status == SagaStatus.RUNNING
    assert [e.step_name for e in await storage.get_step_history(saga_id)] == ["reserve"]

    # A restarted app with a recovery worker finishes it once the dead run's lease has expired.
    now[0] += datetime.timedelta(minutes=5)
    probe.hold.clear()
    restarted = make_app(make_config(probe, storage=storage, recovery_interval=0.01), recovery=True)
    async with serve(restarted):
        worker = runtime(restarted).recovery
        assert worker is not None
        for _ in range(500):
            record = await storage.get_saga(saga_id)
            assert record is not None
            if record.status.is_final:
                break
            await asyncio.sleep(0.01)
        task = runtime(restarted).recovery_task
    assert record.status == SagaStatus.COMPLETED
    assert worker.recovered == {"completed": 1}
    assert task is not None and task.done() and not task.cancelled() and task.exception() is None


async def test_recovery_worker_follows_config_and_stops_at_shutdown() -> None:
    built: list[cqrs.SagaMediator] = []

    def factory(mediator: cqrs.SagaMediator) -> cqrs.saga.recovery.RecoveryWorker:
        built.append(mediator)
        return mediator.recovery_worker(poll_interval=60.0)

    config = make_config(Probe())
    app = make_app(config, recovery=factory)
    async with serve(app):
        state = runtime(app)
        assert built == [state.mediator] and state.recovery is not None
        assert state.recovery_task is not None and not state.recovery_task.done()
    # stop() makes the worker leave its 60s poll wait at once: shutdown did not cancel it.
    assert state.recovery_task.done() and not state.recovery_task.cancelled()

    plain = make_app(make_config(Probe()))
    async with serve(plain):
        assert runtime(plain).recovery is None
    on = make_app(make_config(Probe(), recovery=True, recovery_interval=60.0))
    async with serve(on):
        assert runtime(on).recovery is not None


# -- dependencies ----------------------------------------------------------------------------------


async def test_dependencies_give_the_apps_mediator_storage_and_config() -> None:
    config = make_config(Probe())
    app = make_app(config)
    async with serve(app) as client:
        body = (await client.post("/orders/inline", json=ORDER)).json()
        assert body["status"] == body["stored"] == "completed"
        assert runtime(app).mediator.storage is runtime(app).storage
        record = await runtime(app).storage.get_saga(uuid.UUID(body["saga_id"]))
        assert record is not None and record.name == "order"


async def test_dependencies_without_the_lifespan_name_the_fix() -> None:
    app = fastapi.FastAPI()

    @app.get("/m")
    async def uses_mediator(mediator: Mediator) -> None:
        raise AssertionError("not reached")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        with pytest.raises(RuntimeError, match="create_lifespan"):
            await client.get("/m")


def test_missing_fastapi_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "cqrs.integrations.fastapi")
    with pytest.raises(ImportError, match=r"pip install 'cqrs-saga\[fastapi\]'"):
        importlib.import_module("cqrs.integrations.fastapi")


# -- correlation ids -------------------------------------------------------------------------------


@pytest.fixture
def captured_logs() -> typing.Iterator[Capture]:
    with capturing("tests.fastapi") as handler:
        yield handler


def test_middleware_is_pure_asgi() -> None:
    assert not issubclass(saga_api.SagaContextMiddleware, BaseHTTPMiddleware)


async def test_middleware_generates_and_echoes_an_id() -> None:
    app = make_app(make_config(Probe()))
    async with serve(app) as client:
        first = (await client.get("/config")).headers["x-correlation-id"]
        second = (await client.get("/config")).headers["x-correlation-id"]
        given = (await client.get("/config", headers={"X-Correlation-ID": "req-42"})).headers
        unfit = (await client.get("/config", headers={"X-Correlation-ID": "bad id\twith spaces"})).headers
        too_long = (await client.get("/config", headers={"X-Correlation-ID": "x" * 500})).headers
    assert first and second and first != second
    assert given.get_list("x-correlation-id") == ["req-42"]
    assert unfit["x-correlation-id"] not in ("bad id\twith spaces", "") and " " not in unfit["x-correlation-id"]
    assert len(too_long["x-correlation-id"]) < 100


async def test_middleware_custom_header_and_request_state() -> None:
    app = fastapi.FastAPI()
    app.add_middleware(saga_api.SagaContextMiddleware, header_name="X-Request-ID")

    @app.get("/state")
    async def state(request: Request) -> dict[str, str | None]:
        return {"state": request.state.correlation_id, "var": correlation.get_correlation_id()}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        response = await client.get("/state", headers={"X-Request-ID": "abc.123"})
    assert response.json() == {"state": "abc.123", "var": "abc.123"}
    assert response.headers["x-request-id"] == "abc.123"
    assert "x-correlation-id" not in response.headers
    assert correlation.get_correlation_id() is None  # reset after the request


async def test_correlation_id_reaches_the_saga_record_step_code_and_logs(captured_logs: Capture) -> None:
    probe = Probe()
    config = make_config(probe)
    app = make_app(config)
    async with serve(app) as client:
        response = await client.post("/orders", json=ORDER, headers={"X-Correlation-ID": "order-req-7"})
        assert response.headers["x-correlation-id"] == "order-req-7"
        saga_id = uuid.UUID(response.json()["saga_id"])
        await runtime(app).wait_idle()
        record = await runtime(app).storage.get_saga(saga_id)
        by_correlation = await runtime(app).storage.list_sagas(correlation_id="order-req-7")
    assert record is not None and record.correlation_id == "order-req-7"
    assert [r.saga_id for r in by_correlation] == [saga_id]
    assert probe.correlation_ids == ["order-req-7"] * 3
    ids = {(r.name, r.correlation_id) for r in captured_logs.records}  # type: ignore[attr-defined]
    assert ("tests.fastapi.endpoint", "order-req-7") in ids
    assert ("tests.fastapi.steps", "order-req-7") in ids
    step_records = [r for r in captured_logs.records if r.name == "tests.fastapi.steps"]
    assert {r.saga_id for r in step_records} == {str(saga_id)}  # type: ignore[attr-defined]


# -- Server-Sent Events ------------------------------------------------------------------------------


async def test_stream_of_a_successful_saga() -> None:
    config = make_config(Probe())
    app = make_app(config)
    async with serve(app) as client:
        response = await client.post("/orders/stream", json=ORDER, headers={"X-Correlation-ID": "sse-1"})
        record = await runtime(app).storage.get_saga(uuid.UUID(response.headers["x-saga-id"]))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    events = parse_sse(response.text)
    assert [name for name, _ in events] == ["start", "step_completed", "step_completed", "step_completed", "completed"]
    start = events[0][1]
    assert start["saga_id"] == response.headers["x-saga-id"]
    assert start["saga"] == "order" and start["correlation_id"] == "sse-1"
    assert [(e["step"], e["response"]) for _, e in events[1:4]] == [
        ("reserve", {"reservation_id": "res-A-1"}),
        ("charge", {"payment_id": "pay-A-1"}),
        ("ship", {"tracking": "trk-A-1"}),
    ]
    assert events[-1][1]["status"] == "completed"
    assert {e["saga_id"] for _, e in events} == {start["saga_id"]}
    assert record is not None and record.status == SagaStatus.COMPLETED and record.correlation_id == "sse-1"


async def test_stream_of_a_failing_saga_shows_failure_and_compensation() -> None:
    probe = Probe()
    config = make_config(probe)
    app = make_app(config)
    async with serve(app) as client:
        response = await client.post("/orders/stream", json=DECLINED)
    events = parse_sse(response.text)
    assert [(name, e.get("step")) for name, e in events] == [
        ("start", None),
        ("step_completed", "reserve"),
        ("step_failed", "charge"),
        ("compensating", None),
        ("step_compensated", "reserve"),
        ("failed", None),
    ]
    assert "PaymentDeclined: card declined for A-2" in events[2][1]["error"]
    assert events[-1][1]["error"] == events[2][1]["error"]
    assert events[-1][1]["status"] == "failed"
    assert probe.compensated == ["reserve"]


async def test_client_disconnecting_mid_stream_does_not_stop_the_saga() -> None:
    probe = Probe()
    probe.hold.add("ship")
    config = make_config(probe)
    app = make_app(config)
    async with serve(app):
        storage = runtime(app).storage
        body = json.dumps(ORDER).encode()
        chunks: list[bytes] = []
        got_charge = asyncio.Event()
        disconnected = asyncio.Event()
        requested = False

        async def receive() -> dict[str, typing.Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: typing.MutableMapping[str, typing.Any]) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message["body"])
                if b'"step":"charge"' in message["body"]:
                    got_charge.set()

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/orders/stream", "raw_path": b"/orders/stream", "query_string": b"",
            "root_path": "", "headers": [(b"host", b"app"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1234), "server": ("app", 80), "state": {},
        }
        request = asyncio.ensure_future(app(scope, receive, send))
        await got_charge.wait()
        await probe.event(probe.entered, "ship").wait()
        disconnected.set()
        await request  # the response ends when the client goes away...

        saga_id = uuid.UUID(parse_sse(b"".join(chunks).decode())[0][1]["saga_id"])
        record = await storage.get_saga(saga_id)
        assert record is not None and record.status == SagaStatus.RUNNING  # ...while the saga is mid-way
        assert [name for name, _ in parse_sse(b"".join(chunks).decode())] == [
            "start", "step_completed", "step_completed",
        ]

        probe.event(probe.release, "ship").set()
        await runtime(app).wait_idle()
        record = await storage.get_saga(saga_id)
        history = await storage.get_step_history(saga_id)
    assert record is not None and record.status == SagaStatus.COMPLETED
    assert [(e.step_name, e.status) for e in history] == [(name, SagaStepStatus.COMPLETED) for name in STEP_NAMES]


async def test_streaming_with_a_used_saga_id_is_a_409_and_starts_nothing() -> None:
    config = make_config(Probe())
    app = make_app(config)
    saga_id = uuid.uuid4()

    @app.post("/orders/{saga_id}/stream")
    async def stream_again(saga_id: uuid.UUID, request: Request, order: Order) -> fastapi.responses.StreamingResponse:
        return await saga_api.saga_event_stream(request, order, saga_id=saga_id)

    async with serve(app) as client:
        first = parse_sse((await client.post(f"/orders/{saga_id}/stream", json=ORDER)).text)
        again = await client.post(f"/orders/{saga_id}/stream", json=ORDER)
        stored = await runtime(app).storage.list_sagas()
    assert first[-1][0] == "completed" and first[0][1]["saga_id"] == str(saga_id)
    assert again.status_code == 409 and str(saga_id) in again.json()["detail"]
    assert [r.saga_id for r in stored] == [saga_id]


async def test_keepalive_comments_while_a_step_runs() -> None:
    probe = Probe()
    probe.hold.add("charge")
    config = make_config(probe)
    app = make_app(config)

    @app.post("/orders/stream-keepalive")
    async def stream_keepalive(request: Request, order: Order) -> fastapi.responses.StreamingResponse:
        return await saga_api.saga_event_stream(request, order, keepalive=0.01)

    async with serve(app) as client:
        async def release_soon() -> None:
            await probe.event(probe.entered, "charge").wait()
            await asyncio.sleep(0.05)  # the silence the keepalive fills
            probe.event(probe.release, "charge").set()

        releaser = asyncio.ensure_future(release_soon())
        response = await client.post("/orders/stream-keepalive", json=ORDER)
        await releaser
    assert ": keepalive\n\n" in response.text
    assert parse_sse(response.text)[-1][0] == "completed"


# -- background runs -------------------------------------------------------------------------------


async def test_background_run_is_stored_before_the_202_and_then_finishes() -> None:
    probe = Probe()
    probe.hold.add("reserve")
    config = make_config(probe)
    app = make_app(config)
    async with serve(app) as client:
        storage = runtime(app).storage
        response = await client.post("/orders", json=ORDER)
        assert response.status_code == 202
        saga_id = uuid.UUID(response.json()["saga_id"])
        record = await storage.get_saga(saga_id)
        assert record is not None and record.status in (SagaStatus.PENDING, SagaStatus.RUNNING)
        assert record.context["order_id"] == "A-1"
        assert await storage.get_step_history(saga_id) == []

        probe.event(probe.release, "reserve").set()
        await runtime(app).wait_idle()
        status = (await client.get(f"/sagas/{saga_id}")).json()
    assert status["status"] == "completed"
    assert [s["step"] for s in status["completed_steps"]] == STEP_NAMES
    assert status["completed_steps"][2]["response"] == {"tracking": "trk-A-1"}


async def test_background_run_of_a_failing_saga_compensates() -> None:
    probe = Probe()
    config = make_config(probe)
    app = make_app(config)
    async with serve(app) as client:
        response = await client.post("/orders", json=DECLINED)
        assert response.status_code == 202
        saga_id = response.json()["saga_id"]
        await runtime(app).wait_idle()
        status = (await client.get(f"/sagas/{saga_id}")).json()
    assert status["status"] == "failed"
    assert status["failed_step"] == "charge"
    assert status["compensated_steps"] == ["reserve"]
    assert "PaymentDeclined" in status["error"]
    assert probe.compensated == ["reserve"]


async def test_reusing_the_id_of_a_running_saga_is_a_409() -> None:
    probe = Probe()
    probe.hold.add("reserve")
    config = make_config(probe)
    app = make_app(config)
    saga_id = uuid.uuid4()

    @app.post("/orders/{saga_id}", status_code=202)
    async def create_with_id(saga_id: uuid.UUID, request: Request, order: Order) -> dict[str, str]:
        return {"saga_id": str(await saga_api.start_saga(request, order, saga_id=saga_id))}

    async with serve(app) as client:
        assert (await client.post(f"/orders/{saga_id}", json=ORDER)).status_code == 202
        await probe.event(probe.entered, "reserve").wait()
        again = await client.post(f"/orders/{saga_id}", json=ORDER)
        probe.event(probe.release, "reserve").set()
    assert again.status_code == 409
    assert str(saga_id) in again.json()["detail"]


# -- status and diagram routes ---------------------------------------------------------------------


async def test_status_and_diagram_routes() -> None:
    config = make_config(Probe())
    app = make_app(config)
    async with serve(app) as client:
        ok = (await client.post("/orders/inline", json=ORDER)).json()["saga_id"]
        bad = (await client.post("/orders/inline", json=DECLINED)).json()["saga_id"]

        status = await client.get(f"/sagas/{ok}")
        text = await client.get(f"/sagas/{ok}/diagram")
        as_json = await client.get(f"/sagas/{bad}/diagram", params={"format": "json"})
        failed_text = (await client.get(f"/sagas/{bad}/diagram")).text

        unknown = uuid.uuid4()
        not_found = [await client.get(f"/sagas/{unknown}"), await client.get(f"/sagas/{unknown}/diagram")]
        malformed = [await client.get("/sagas/not-a-uuid"), await client.get("/sagas/123/diagram")]
        bad_format = await client.get(f"/sagas/{ok}/diagram", params={"format": "svg"})

    assert status.status_code == 200
    body = status.json()
    assert body["saga_id"] == ok and body["status"] == "completed" and body["saga"] == "order"
    assert [(s["step"], s["response"]) for s in body["completed_steps"]] == [
        ("reserve", {"reservation_id": "res-A-1"}),
        ("charge", {"payment_id": "pay-A-1"}),
        ("ship", {"tracking": "trk-A-1"}),
    ]
    assert body["failed_step"] is None and body["error"] is None

    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert text.text.startswith("flowchart")
    for step in STEP_NAMES:
        assert step in text.text
    assert "completed" in text.text

    assert as_json.status_code == 200
    diagram = as_json.json()
    assert diagram["saga_id"] == bad and diagram["status"] == "failed"
    assert diagram["diagram"] == failed_text
    assert "compensated" in failed_text and "failed" in failed_text and "not reached" in failed_text

    for response in not_found:
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json() == {
            "type": "about:blank", "title": "Not Found", "status": 404, "detail": f"No saga with id {unknown}"
        }
    for response in [*malformed, bad_format]:
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert isinstance(response.json()["detail"], str)


async def test_router_dependencies_guard_the_routes() -> None:
    config = make_config(Probe())

    def token(x_token: typing.Annotated[str | None, fastapi.Header()] = None) -> None:
        if x_token != "secret":
            raise fastapi.HTTPException(status_code=401, detail="no")

    app = fastapi.FastAPI(lifespan=saga_api.create_lifespan(config))
    app.include_router(saga_api.operator_routes(prefix="/admin/sagas", dependencies=[fastapi.Depends(token)]))
    async with serve(app) as client:
        saga_id = await runtime(app).mediator.start(OrderContext("A-9", 1.0))
        assert (await client.get(f"/admin/sagas/{saga_id}")).status_code == 401
        allowed = await client.get(f"/admin/sagas/{saga_id}", headers={"X-Token": "secret"})
        assert allowed.status_code == 200 and allowed.json()["status"] == "running"


# -- bad input -------------------------------------------------------------------------------------


async def assert_no_sagas(app: fastapi.FastAPI) -> None:
    assert await runtime(app).storage.list_sagas() == []


@pytest.mark.parametrize("path", ["/orders", "/orders/stream", "/orders/inline"])
async def test_bad_bodies_are_4xx_json_and_store_nothing(path: str) -> None:
    config = make_config(Probe())
    app = make_app(config)

    async def oversized_stream() -> typing.AsyncIterator[bytes]:
        yield b'{"order_id": "A-1", "amount": 1.0, "pad": "'
        for _ in range(10):
            yield b"x" * 64
        yield b'"}'

    async with serve(app) as client:
        cases = {
            "not json": await client.post(path, content=b'{"order_id": ', headers={"content-type": "application/json"}),
            "not an object": await client.post(path, json=[1, 2]),
            "wrong type": await client.post(path, json={"order_id": "A-1", "amount": "lots"}),
            "missing field": await client.post(path, json={"order_id": "A-1"}),
            "empty": await client.post(path),
            "too large": await client.post(path, json={"order_id": "A-1", "amount": 1.0, "pad": "x" * 400}),
            "too large, no length": await client.post(path, content=oversized_stream()),
            "bad length": await client.post(path, content=b"{}", headers={"content-length": "abc"}),
        }
        await assert_no_sagas(app)

    expected = {
        "not json": (400, "not valid JSON"),
        "not an object": (400, "must be a JSON object"),
        "wrong type": (422, "amount"),
        "missing field": (422, "amount: Field required"),
        "empty": (400, "not valid JSON"),
        "too large": (413, "limit of 256"),
        "too large, no length": (413, "limit of 256"),
        "bad length": (400, "Content-Length"),
    }
    for case, response in cases.items():
        status, fragment = expected[case]
        assert response.status_code == status, (case, response.text)
        assert response.headers["content-type"] == "application/problem+json", case
        assert fragment in response.json()["detail"], (case, response.json())


async def test_body_larger_than_its_content_length_is_a_413() -> None:
    config = make_config(Probe(), max_body_bytes=100)
    app = make_app(config)
    async with serve(app):
        chunks = [
            {"type": "http.request", "body": b'{"order_id": "A-1", "amount": 1, "pad": "', "more_body": True},
            {"type": "http.request", "body": b"y" * 200, "more_body": True},
            {"type": "http.request", "body": b'"}', "more_body": False},
        ]

        async def receive() -> dict[str, typing.Any]:
            return chunks.pop(0)

        scope = {
            "type": "http", "method": "POST", "path": "/orders", "query_string": b"", "app": app,
            "headers": [(b"content-length", b"20")],
        }
        with pytest.raises(saga_api.Problem) as raised:
            await saga_api.read_saga_context(Request(scope, receive), OrderContext)
        assert raised.value.status == 413 and isinstance(raised.value, StarletteHTTPException)
        assert len(chunks) == 1  # it stopped reading once past the limit
        await assert_no_sagas(app)


async def test_saga_context_limit_can_be_set_per_endpoint() -> None:
    config = make_config(Probe(), max_body_bytes=10_000)
    app = make_app(config)

    @app.post("/small")
    async def small(
        order: typing.Annotated[OrderContext, fastapi.Depends(saga_api.saga_context(OrderContext, max_bytes=40))],
    ) -> dict[str, str]:
        return {"order_id": order.order_id}

    async with serve(app) as client:
        assert (await client.post("/small", json=ORDER)).json() == {"order_id": "A-1"}
        assert (await client.post("/small", json={**ORDER, "pad": "x" * 40})).status_code == 413


# -- on SQLite ---------------------------------------------------------------------------------------


async def test_on_sqlite_lifespan_runs_and_closes_the_storage(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cqrs.config import open_storage

    SqlAlchemySagaStorage = importlib.import_module("cqrs.saga.storage.sqlalchemy").SqlAlchemySagaStorage
    closed: list[object] = []
    original_close = SqlAlchemySagaStorage.close

    async def close(self: typing.Any) -> None:
        closed.append(self)
        await original_close(self)

    monkeypatch.setattr(SqlAlchemySagaStorage, "close", close)
    probe = Probe()
    probe.hold.add("ship")
    config = make_config(probe, storage_url=sqlite_url)
    app = make_app(config)
    async with serve(app) as client:
        storage = runtime(app).storage
        assert isinstance(storage, SqlAlchemySagaStorage)
        background = (await client.post("/orders", json=ORDER, headers={"X-Correlation-ID": "lite-1"})).json()
        record = await storage.get_saga(uuid.UUID(background["saga_id"]))
        assert record is not None and record.status in (SagaStatus.PENDING, SagaStatus.RUNNING)
        assert record.correlation_id == "lite-1"
        probe.event(probe.release, "ship").set()
        streamed = parse_sse((await client.post("/orders/stream", json=DECLINED)).text)
        await runtime(app).wait_idle()
        status = (await client.get(f"/sagas/{background['saga_id']}")).json()
        diagram = await client.get(f"/sagas/{streamed[0][1]['saga_id']}/diagram")
        assert (await client.post("/orders", json={"order_id": 1})).status_code == 422
        pool = storage.engine.sync_engine.pool
        assert pool.checkedin() > 0  # idle connections the shutdown must close
    assert closed == [storage] and not hasattr(app.state, "saga")
    assert pool.checkedin() == 0 and pool.checkedout() == 0  # the engine was disposed
    assert storage.engine.sync_engine.pool is not pool

    assert status["status"] == "completed" and [s["step"] for s in status["completed_steps"]] == STEP_NAMES
    assert [name for name, _ in streamed][-3:] == ["compensating", "step_compensated", "failed"]
    assert diagram.status_code == 200 and "compensated" in diagram.text

    reopened = await open_storage(sqlite_url, create_tables=False)
    try:
        records = {str(r.saga_id): r.status for r in await reopened.list_sagas()}
    finally:
        await reopened.close()
    assert records == {background["saga_id"]: SagaStatus.COMPLETED, streamed[0][1]["saga_id"]: SagaStatus.FAILED}


async def test_the_middleware_reads_the_configured_header() -> None:
    config = make_config(Probe(), correlation_header="X-Request-ID")
    app = make_app(config)
    async with serve(app) as client:
        response = await client.post("/orders", json=ORDER, headers={"X-Request-ID": "req-77"})
        assert response.headers["X-Request-ID"] == "req-77" and "X-Correlation-ID" not in response.headers
        await runtime(app).wait_idle()
        record = await runtime(app).storage.get_saga(uuid.UUID(response.json()["saga_id"]))
    assert record is not None and record.correlation_id == "req-77"
