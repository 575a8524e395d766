"""A saga runner to be SIGKILLed mid-saga, with OpenTelemetry configured as an application does.

    python tests/telemetry_crash.py --url sqlite+aiosqlite:///... --spans spans.jsonl

It sets a global SDK tracer provider whose finished spans are appended to
``--spans`` (a JSON object a line, fsynced), builds a mediator with no hook
of its own (tracing comes with the defaults), and runs `ShopSaga` inside a
``POST /orders`` span. Once ``reserve``'s completion is committed it prints
``at-kill-point`` and waits to be killed; it never gets further.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import typing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import di
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import cqrs
from cqrs.saga.hooks import RunInfo, SagaHook
from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage
from shop_saga import ShopContext, ShopSaga

KILL_MARKER = "at-kill-point"


def span_json(span: ReadableSpan) -> dict[str, typing.Any]:
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
        "attributes": dict(span.attributes or {}),
    }


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to a file at once (this process dies without flushing anything)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as out:
            for span in spans:
                out.write(json.dumps(span_json(span)) + "\n")
            out.flush()
            os.fsync(out.fileno())
        return SpanExportResult.SUCCESS


class WaitToBeKilled(SagaHook):
    def __init__(self, step: str) -> None:
        self.step = step

    async def step_completed(self, run: RunInfo, step: str, result: typing.Any, events: typing.Any) -> None:
        if step == self.step:
            print(KILL_MARKER, flush=True)
            await asyncio.Event().wait()


async def main(url: str) -> None:
    storage = SqlAlchemySagaStorage.from_url(url)
    await storage.create_tables()
    saga_map = cqrs.SagaMap()
    saga_map.register(ShopSaga)
    mediator = cqrs.SagaMediator(saga_map, di.Container(), storage=storage, hooks=[WaitToBeKilled("reserve")])
    with trace.get_tracer("shop.web").start_as_current_span("POST /orders"):
        await mediator.run(ShopContext("o-crash"), correlation_id="corr-crash")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--spans", required=True)
    args = parser.parse_args()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(args.spans)))
    trace.set_tracer_provider(provider)
    asyncio.run(main(args.url))
