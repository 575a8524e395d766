"""What the engine itself costs per step: a 3-step no-op saga on in-memory storage.

    .venv/bin/python benchmarks/bench_memory.py            # 10,000 sagas, best of 3 rounds
    .venv/bin/python benchmarks/bench_memory.py --sagas 2000 --rounds 1
    .venv/bin/python benchmarks/bench_memory.py --json out.json

Two loops run the same three step objects back to back, one saga at a time:

- **direct**: ``await step.act(context)`` for each step, plus building the
  context: what a hand-written sequence of the three calls costs.
- **engine**: ``SagaMediator.run(context)`` on ``MemorySagaStorage``: saga
  record, lease, one checkpoint per step, step resolution through the DI
  container, results, final status.

*framework µs per step* = (engine time - direct time) / sagas / 3. The target
(issue 2) is under 15 µs per step on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import sys
import time

import di

import cqrs
from cqrs.response import Response
from cqrs.saga import bootstrap
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.memory import MemorySagaStorage

STEPS = 3
TARGET_US_PER_STEP = 15.0


@dataclasses.dataclass
class NoopContext(SagaContext):
    order_id: str
    done: int = 0


class NoopResponse(Response):
    pass


_RESPONSE = NoopResponse()


class _Noop(SagaStepHandler[NoopContext, NoopResponse]):
    async def act(self, context: NoopContext) -> SagaStepResult[NoopContext, NoopResponse]:
        context.done += 1
        return self._generate_step_result(_RESPONSE)

    async def compensate(self, context: NoopContext) -> None:
        context.done -= 1


class StepOne(_Noop):
    pass


class StepTwo(_Noop):
    pass


class StepThree(_Noop):
    pass


class NoopSaga(Saga[NoopContext]):
    steps = [StepOne, StepTwo, StepThree]


def make_mediator() -> cqrs.SagaMediator:
    def saga_mapper(mapper: cqrs.SagaMap) -> None:
        mapper.bind(NoopContext, NoopSaga)

    return bootstrap.bootstrap(
        di_container=di.Container(), sagas_mapper=saga_mapper, saga_storage=MemorySagaStorage()
    )


async def time_direct(sagas: int) -> float:
    steps = [StepOne(), StepTwo(), StepThree()]
    started = time.perf_counter()
    for index in range(sagas):
        context = NoopContext(order_id=str(index))
        for step in steps:
            await step.act(context)
    return time.perf_counter() - started


async def time_engine(sagas: int) -> float:
    mediator = make_mediator()
    started = time.perf_counter()
    for index in range(sagas):
        outcome = await mediator.run(NoopContext(order_id=str(index)))
        if not outcome.succeeded:
            raise RuntimeError(f"saga ended {outcome.status}: {outcome.error!r}")
    return time.perf_counter() - started


async def measure(sagas: int, rounds: int) -> dict[str, float]:
    await time_engine(min(sagas, 500))  # warm-up: imports, caches, DI graph
    direct = engine = float("inf")
    for _ in range(rounds):
        gc.collect()
        direct = min(direct, await time_direct(sagas))
        gc.collect()
        engine = min(engine, await time_engine(sagas))
    return {
        "sagas": sagas,
        "engine_sagas_per_s": sagas / engine,
        "direct_sagas_per_s": sagas / direct,
        "engine_us_per_saga": engine / sagas * 1e6,
        "framework_us_per_step": (engine - direct) / sagas / STEPS * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sagas", type=int, default=10_000, help="sagas per round (default 10000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the fastest is reported (default 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)

    figures = asyncio.run(measure(args.sagas, args.rounds))
    per_step = figures["framework_us_per_step"]
    print(f"3-step no-op saga on MemorySagaStorage, {args.sagas} sagas, best of {args.rounds}")
    print(f"  engine:  {figures['engine_sagas_per_s']:>10.0f} sagas/s  ({figures['engine_us_per_saga']:.1f} µs/saga)")
    print(f"  direct:  {figures['direct_sagas_per_s']:>10.0f} sagas/s  (the three act() calls alone)")
    print(f"  framework µs per step: {per_step:.1f}  (target < {TARGET_US_PER_STEP:.0f}; "
          f"ratio to target {per_step / TARGET_US_PER_STEP:.2f})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
