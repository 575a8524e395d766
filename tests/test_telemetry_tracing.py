"""OpenTelemetry spans of saga runs, checked with the SDK's in-memory exporter.

A success, a failure with compensation, and a runner SIGKILLed after its
first step committed whose saga a recovery run in this process finishes:
one trace across the two processes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import typing
import uuid
from pathlib import Path

import di
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import cqrs
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.settings import EngineSettings
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.telemetry import default_hooks
from cqrs.telemetry.logs import LeaseLossLogHook, LogHook
from cqrs.telemetry.tracing import RunTracingHook, TracingHook, propagation_headers
from durability.db import expire_leases, open_storage
from shop_saga import ShopContext, ShopSaga

CRASH_RUNNER = Path(__file__).parent / "telemetry_crash.py"
Tree = list[tuple[str, "Tree"]]


class Traced(typing.NamedTuple):
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.spans() if s.name == name]
        return span


@pytest.fixture
def traced() -> Traced:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Traced(provider, exporter)


def mediator_for(traced: Traced, storage: typing.Any = None, **kwargs: typing.Any) -> cqrs.SagaMediator:
    saga_map = cqrs.SagaMap()
    saga_map.register(ShopSaga)
    return cqrs.SagaMediator(
        saga_map,
        di.Container(),
        storage=storage or MemorySagaStorage(),
        settings=EngineSettings(compensation_retry=RetryPolicy(attempts=1)),
        hooks=[TracingHook(traced.provider)],
        telemetry=False,
        **kwargs,
    )


def tree(spans: typing.Sequence[ReadableSpan], parent: int | None = None) -> Tree:
    """The spans as (name, children) pairs under ``parent`` (None: the roots), in start order."""
    children = [s for s in spans if (s.parent.span_id if s.parent else None) == parent]
    children.sort(key=lambda s: s.start_time or 0)
    return [(s.name, tree(spans, s.context.span_id)) for s in children if s.context is not None]


def ids(traceparent: str) -> tuple[int, int]:
    """The trace id and parent span id of a W3C ``traceparent`` header."""
    _, trace_id, span_id, _ = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)


def attributes(span: ReadableSpan) -> dict[str, typing.Any]:
    return dict(span.attributes or {})


async def test_a_completed_saga_is_a_run_span_with_a_span_per_step(traced: Traced) -> None:
    mediator = mediator_for(traced)
    with traced.provider.get_tracer("shop.web").start_as_current_span("POST /orders") as request:
        outcome = await mediator.run(ShopContext("o-1"), correlation_id="corr-1")
    assert outcome.succeeded

    assert tree(traced.spans()) == [
        ("POST /orders", [("saga ShopSaga", [("act reserve", []), ("act charge", []), ("act ship", [])])])
    ]
    run = traced.named("saga ShopSaga")
    assert attributes(run) == {
        "cqrs.saga.id": str(outcome.saga_id),
        "cqrs.saga.name": "ShopSaga",
        "cqrs.saga.correlation_id": "corr-1",
        "cqrs.saga.recovering": False,
        "cqrs.saga.outcome": "completed",
    }
    assert run.status.status_code == StatusCode.UNSET
    assert attributes(traced.named("act charge")) == {
        "cqrs.saga.id": str(outcome.saga_id),
        "cqrs.saga.name": "ShopSaga",
        "cqrs.saga.correlation_id": "corr-1",
        "cqrs.saga.step": "charge",
        "cqrs.saga.action": "act",
        "cqrs.saga.attempt": 1,
        "cqrs.saga.outcome": "ok",
    }
    # The request's trace context is stored with the saga.
    record = await mediator.storage.get_saga(outcome.saga_id)
    assert record is not None and record.trace_context is not None
    context = request.get_span_context()
    assert ids(record.trace_context["traceparent"]) == (context.trace_id, context.span_id)


async def test_a_failed_saga_records_the_error_and_each_compensation(traced: Traced) -> None:
    outcome = await mediator_for(traced).run(ShopContext("o-2", fail_at="ship"))
    assert outcome.status == SagaStatus.FAILED

    assert tree(traced.spans()) == [
        (
            "saga ShopSaga",
            [
                ("act reserve", []),
                ("act charge", []),
                ("act ship", []),
                ("compensate charge", []),
                ("compensate reserve", []),
            ],
        )
    ]
    run = traced.named("saga ShopSaga")
    assert run.status.status_code == StatusCode.ERROR
    assert run.status.description == "Declined: ship declined order o-2"
    assert attributes(run)["cqrs.saga.outcome"] == "failed"
    assert [event.name for event in run.events] == ["exception", "compensation started"]

    ship = traced.named("act ship")
    assert ship.status.status_code == StatusCode.ERROR
    assert attributes(ship)["cqrs.saga.outcome"] == "error"
    (exception,) = ship.events
    assert exception.attributes is not None and exception.attributes["exception.type"] == "shop_saga.Declined"
    assert attributes(traced.named("compensate charge"))["cqrs.saga.action"] == "compensate"


async def test_a_stuck_compensation_ends_compensation_failed_with_each_attempt_spanned(traced: Traced) -> None:
    saga_map = cqrs.SagaMap()
    saga_map.register(ShopSaga)

    async def no_wait(delay: float) -> None:
        pass

    mediator = cqrs.SagaMediator(
        saga_map, di.Container(), hooks=[TracingHook(traced.provider)], telemetry=False,
        settings=EngineSettings(compensation_retry=RetryPolicy(attempts=2), sleep=no_wait),
    )
    outcome = await mediator.run(ShopContext("o-3", fail_at="charge", stuck="reserve"))
    assert outcome.status == SagaStatus.COMPENSATION_FAILED
    attempts = [attributes(s)["cqrs.saga.attempt"] for s in traced.spans() if s.name == "compensate reserve"]
    assert attempts == [1, 2]
    run = traced.named("saga ShopSaga")
    assert attributes(run)["cqrs.saga.outcome"] == "compensation_failed"
    assert "compensation failed" in [event.name for event in run.events]


async def test_propagation_headers_name_the_running_attempt_and_the_run(traced: Traced) -> None:
    seen: dict[str, dict[str, str]] = {}

    class Publish(SagaStepHandler[ShopContext, cqrs.Response]):
        name = "publish"

        async def act(self, context: ShopContext) -> SagaStepResult[ShopContext, cqrs.Response]:
            seen["step"] = propagation_headers()
            return self._generate_step_result(cqrs.Response())

    class PublishSaga(cqrs.Saga[ShopContext]):
        steps = [Publish]

    class RunHeaders(cqrs.SagaHook):
        def saga_finished(self, run: cqrs.RunInfo, status: SagaStatus, error: str | None) -> None:
            seen["run"] = propagation_headers(run)

    saga_map = cqrs.SagaMap()
    saga_map.register(PublishSaga)
    tracing = TracingHook(traced.provider)
    mediator = cqrs.SagaMediator(saga_map, di.Container(), hooks=[RunHeaders(), tracing], telemetry=False)
    await mediator.run(ShopContext("o-4"))

    attempt, run = traced.named("act publish").context, traced.named("saga PublishSaga").context
    assert ids(seen["step"]["traceparent"]) == (attempt.trace_id, attempt.span_id)
    assert ids(seen["run"]["traceparent"]) == (run.trace_id, run.span_id)
    assert propagation_headers() == {}  # no span is current here


async def test_without_a_configured_provider_the_default_hooks_record_nothing() -> None:
    assert not isinstance(trace.get_tracer_provider(), TracerProvider), "another test set a global provider"
    hooks = default_hooks()
    assert [type(h) for h in hooks] == [LogHook, LeaseLossLogHook, RunTracingHook]  # nothing per step attempt
    saga_map = cqrs.SagaMap()
    saga_map.register(ShopSaga)
    mediator = cqrs.SagaMediator(saga_map, di.Container())
    assert [type(h) for h in mediator.hooks] == [LogHook, LeaseLossLogHook, RunTracingHook]
    run_hooks = mediator.build_run(ShopSaga, uuid.uuid4()).hooks
    assert [type(h) for h in run_hooks.hooks] == [LeaseLossLogHook]  # the others are not active
    assert run_hooks.step_completed == ()  # nothing per step
    outcome = await mediator.run(ShopContext("o-5"))
    record = await mediator.storage.get_saga(outcome.saga_id)
    assert record is not None and record.trace_context is None
    assert cqrs.SagaMediator(saga_map, di.Container(), telemetry=False).hooks == ()


async def test_a_mediator_built_before_the_provider_gets_run_spans_only(traced: Traced) -> None:
    saga_map = cqrs.SagaMap()
    saga_map.register(ShopSaga)
    mediator = cqrs.SagaMediator(saga_map, di.Container(), hooks=[RunTracingHook(traced.provider)], telemetry=False)
    with traced.provider.get_tracer("shop.web").start_as_current_span("POST /orders"):
        outcome = await mediator.run(ShopContext("o-6"))
    assert tree(traced.spans()) == [("POST /orders", [("saga ShopSaga", [])])]
    record = await mediator.storage.get_saga(outcome.saga_id)
    assert record is not None and record.trace_context is not None


# -- a crash, then recovery in another process: one trace -------------------------------------------------


async def kill_at_the_kill_point(url: str, spans: Path, log: Path) -> None:
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CRASH_RUNNER), "--url", url, "--spans", str(spans),
            stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=120)
            assert line.decode().strip() == "at-kill-point", (line, log.read_text())
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), timeout=60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()


@pytest.mark.slow
async def test_a_recovery_run_in_another_process_continues_the_trace_of_the_killed_one(
    traced: Traced, sqlite_url: str, tmp_path: Path
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    await kill_at_the_kill_point(sqlite_url, spans_file, tmp_path / "runner.log")

    # What the killed process exported before it died: the span of reserve's attempt, no more.
    dead = [json.loads(line) for line in spans_file.read_text().splitlines()]
    assert [span["name"] for span in dead] == ["act reserve"]
    (reserve,) = dead
    assert reserve["attributes"]["cqrs.saga.correlation_id"] == "corr-crash"
    trace_id = reserve["trace_id"]

    storage = await open_storage(sqlite_url)
    try:
        (record,) = await storage.list_sagas(name="ShopSaga")
        assert record.status == SagaStatus.RUNNING
        assert record.trace_context is not None
        _, stored_trace, request_span, _ = record.trace_context["traceparent"].split("-")
        assert stored_trace == trace_id

        assert await expire_leases(sqlite_url) == 1
        worker = mediator_for(traced, storage).recovery_worker()
        assert await worker.run_once() == 1
        assert worker.recovered == {"completed": 1}
    finally:
        await storage.close()

    # This process's recovery run: a child of the request span of the dead process, linked to it.
    assert tree(traced.spans(), int(request_span, 16)) == [("saga ShopSaga", [("act charge", []), ("act ship", [])])]
    run = traced.named("saga ShopSaga")
    assert run.context is not None and format(run.context.trace_id, "032x") == trace_id
    assert attributes(run)["cqrs.saga.recovering"] is True
    assert attributes(run)["cqrs.saga.correlation_id"] == "corr-crash"
    (link,) = run.links
    assert (format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")) == (trace_id, request_span)
    assert all(format(s.context.trace_id, "032x") == trace_id for s in traced.spans() if s.context is not None)
    assert uuid.UUID(attributes(run)["cqrs.saga.id"]) == record.saga_id
