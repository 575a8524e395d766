"""What the telemetry hooks cost per step: bench_memory's 3-step no-op saga under each telemetry set-up.

    .venv/bin/python benchmarks/bench_telemetry.py                 # 5,000 sagas a round, best of 5
    .venv/bin/python benchmarks/bench_telemetry.py --sagas 2000 --rounds 3
    .venv/bin/python benchmarks/bench_telemetry.py --json out.json

The set-ups run in turn within each round (so a slower minute of a shared
machine hits them all alike); the fastest round of each is reported, as µs
per step over the same saga run with ``telemetry=False``:

- **off**: ``SagaMediator(..., telemetry=False)``: no telemetry hook at all.
- **default**: the default hooks, logging at Python's default (``cqrs.saga``
  at WARNING) and OpenTelemetry, if importable, without a tracer provider.
- **info**: the same with ``cqrs.saga`` at INFO, its records going to a
  handler that drops them (the cost of making each record).
- **otel**: a configured OpenTelemetry SDK tracer provider whose spans go to
  a processor that drops them (the cost of making each span); only when the
  SDK is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import time
import typing
from pathlib import Path

import di

sys.path.insert(0, str(Path(__file__).parent))

import bench_memory

import cqrs
from cqrs.saga.storage.memory import MemorySagaStorage

STEPS = bench_memory.STEPS


class _Drop(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


def _mediator(**kwargs: typing.Any) -> cqrs.SagaMediator:
    saga_map = cqrs.SagaMap()
    saga_map.bind(bench_memory.NoopContext, bench_memory.NoopSaga)
    return cqrs.SagaMediator(saga_map, di.Container(), storage=MemorySagaStorage(), **kwargs)


def _otel_hooks() -> list[object] | None:
    try:
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    except ImportError:
        return None
    from cqrs.telemetry.tracing import TracingHook

    provider = TracerProvider()
    provider.add_span_processor(SpanProcessor())  # the base processor drops every span
    return [TracingHook(provider)]


async def _time(mediator: cqrs.SagaMediator, sagas: int) -> float:
    gc.collect()
    started = time.perf_counter()
    for index in range(sagas):
        outcome = await mediator.run(bench_memory.NoopContext(order_id=str(index)))
        if not outcome.succeeded:
            raise RuntimeError(f"saga ended {outcome.status}: {outcome.error!r}")
    return time.perf_counter() - started


async def measure(sagas: int, rounds: int) -> dict[str, float]:
    saga_logger = logging.getLogger("cqrs.saga")
    drop = _Drop()
    otel = _otel_hooks()

    async def off() -> float:
        return await _time(_mediator(telemetry=False), sagas)

    async def default() -> float:
        return await _time(_mediator(), sagas)

    async def info() -> float:
        saga_logger.setLevel(logging.INFO)
        saga_logger.addHandler(drop)
        saga_logger.propagate = False
        try:
            return await _time(_mediator(), sagas)
        finally:
            saga_logger.setLevel(logging.NOTSET)
            saga_logger.removeHandler(drop)
            saga_logger.propagate = True

    async def traced() -> float:
        return await _time(_mediator(hooks=otel), sagas)

    setups: dict[str, typing.Callable[[], typing.Awaitable[float]]] = {"off": off, "default": default, "info": info}
    if otel is not None:
        setups["otel"] = traced
    best = {name: float("inf") for name in setups}
    await _time(_mediator(), min(sagas, 500))  # warm-up
    for _ in range(rounds):
        for name, setup in setups.items():
            best[name] = min(best[name], await setup())
    figures: dict[str, float] = {"sagas": sagas}
    for name, seconds in best.items():
        figures[f"{name}_us_per_step"] = seconds / sagas / STEPS * 1e6
        figures[f"{name}_extra_us_per_step"] = (seconds - best["off"]) / sagas / STEPS * 1e6
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sagas", type=int, default=5_000, help="sagas per set-up and round (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the fastest is reported (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(args.sagas, args.rounds))
    print(f"3-step no-op saga on MemorySagaStorage, {args.sagas} sagas, best of {args.rounds}; µs per step")
    for name in ("off", "default", "info", "otel"):
        if f"{name}_us_per_step" in figures:
            print(
                f"  {name:<8} {figures[f'{name}_us_per_step']:6.2f}   "
                f"(+{figures[f'{name}_extra_us_per_step']:.2f} over telemetry=False)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
