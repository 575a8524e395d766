"""What the engine itself costs per step: a 3-step no-op saga on in-memory storage.

    .venv/bin/python benchmarks/bench_memory.py            # 10,000 sagas, best of 3 rounds
    .venv/bin/python benchmarks/bench_memory.py --sagas 2000 --rounds 1
    .venv/bin/python benchmarks/bench_memory.py --json out.json
    .venv/bin/python benchmarks/bench_memory.py --against /tmp/pycqrs4/bin/python   # python-cqrs, same run
    .venv/bin/python benchmarks/bench_memory.py --against /tmp/pycqrs4/bin/python --instructions   # + callgrind

Two loops run the same three step objects back to back, one saga at a time:

- **direct**: ``await step.act(context)`` for each step, plus building the
  context: what a hand-written sequence of the three calls costs.
- **engine**: ``SagaMediator.run(context)`` on ``MemorySagaStorage``: saga
  record, lease, one checkpoint per step, step resolution through the DI
  container, results, final status.

*framework µs per step* = (engine time - direct time) / sagas / 3. The target
(issue 17) is at most 15 µs per step on a 2-core machine.

``--against PYTHON`` runs this same script under another interpreter in the
same run, alternating rounds with this one, and prints the per-round ratio
of its engine µs per saga to ours (median of the rounds; the aim is 4x). Each
side's figure in a round is the best of ``--inner`` timings (default 3) in
its own process, so a moment of another tenant's load on a shared machine
does not decide a round. The script uses only the API python-cqrs shares
(``bootstrap``, ``stream``), so an interpreter with python-cqrs installed
measures python-cqrs:

    python3.11 -m venv /tmp/pycqrs4
    /tmp/pycqrs4/bin/pip install python-cqrs==4.15.1 di aiobreaker

``--instructions`` (with ``--against``) also counts the CPU instructions per
saga of each side under valgrind's callgrind: the count of a run of 2,000
sagas minus that of 500, over 1,500. It does not depend on the machine's
load, so it is the steadiest form of the ratio; it needs ``valgrind`` and
takes about a minute a side.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import typing

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
        completed = 0
        async for _ in mediator.stream(NoopContext(order_id=str(index))):
            completed += 1
        if completed != STEPS:
            raise RuntimeError(f"the saga yielded {completed} steps, not {STEPS}")
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


def _one_round(python: str, sagas: int, inner: int) -> dict[str, float]:
    """This script's figures for one round under ``python`` (a subprocess, best of ``inner`` timings)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "figures.json")
        subprocess.run(
            [python, os.path.abspath(__file__), "--sagas", str(sagas), "--rounds", str(inner), "--json", out],
            check=True, stdout=subprocess.DEVNULL,
        )
        with open(out, encoding="utf-8") as figures:
            return typing.cast("dict[str, float]", json.load(figures))


#: The callgrind runs: instructions of SMALL and LARGE sagas after the warm-up; the difference is per saga.
_CALLGRIND_SMALL, _CALLGRIND_LARGE = 500, 2000


async def _instruction_run(sagas: int) -> None:
    await time_engine(300)  # the same warm-up in both runs: imports, caches, the DI graph
    await time_engine(sagas)


def _instructions(python: str, sagas: int) -> int:
    """The instructions callgrind counts for this script's ``--callgrind-sagas`` run under ``python``."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         python, os.path.abspath(__file__), "--callgrind-sagas", str(sagas)],
        check=True, capture_output=True, text=True,
    )
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"callgrind printed no instruction count:\n{done.stderr}")


def instructions_per_saga(python: str) -> float:
    return (_instructions(python, _CALLGRIND_LARGE) - _instructions(python, _CALLGRIND_SMALL)) / (
        _CALLGRIND_LARGE - _CALLGRIND_SMALL
    )


def compare(against: str, sagas: int, rounds: int, inner: int = 3) -> dict[str, typing.Any]:
    """Alternate rounds of this interpreter and ``against``; the per-round ratio of their µs per saga."""
    ratios, ours, theirs = [], [], []
    for round_number in range(rounds):
        order = [sys.executable, against] if round_number % 2 == 0 else [against, sys.executable]
        figures = {python: _one_round(python, sagas, inner) for python in order}
        ours.append(figures[sys.executable]["engine_us_per_saga"])
        theirs.append(figures[against]["engine_us_per_saga"])
        ratios.append(theirs[-1] / ours[-1])
    return {"ours_us_per_saga": ours, "theirs_us_per_saga": theirs, "ratios": ratios,
            "median_ratio": statistics.median(ratios)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sagas", type=int, default=10_000, help="sagas per round (default 10000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the fastest is reported (default 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--against", metavar="PYTHON",
                        help="also time this script under another interpreter (e.g. one with python-cqrs)")
    parser.add_argument("--inner", type=int, default=3,
                        help="with --against: timings per side and round, the best kept (default 3)")
    parser.add_argument("--instructions", action="store_true",
                        help="with --against: also count instructions per saga under valgrind's callgrind")
    parser.add_argument("--callgrind-sagas", type=int, help=argparse.SUPPRESS)  # one side of --instructions
    args = parser.parse_args(argv)

    if args.callgrind_sagas is not None:
        asyncio.run(_instruction_run(args.callgrind_sagas))
        return 0
    if args.against:
        result = compare(args.against, args.sagas, args.rounds, args.inner)
        print(f"engine µs per saga, {args.rounds} alternating rounds of {args.sagas} sagas "
              f"(best of {args.inner} each):")
        for mine, other, ratio in zip(result["ours_us_per_saga"], result["theirs_us_per_saga"], result["ratios"],
                                      strict=True):
            print(f"  this: {mine:7.1f}   {args.against}: {other:7.1f}   ratio {ratio:.2f}")
        print(f"  median ratio {result['median_ratio']:.2f} (aim: at least 4)")
        if args.instructions:
            ours_ir, theirs_ir = instructions_per_saga(sys.executable), instructions_per_saga(args.against)
            result["instructions_per_saga"] = {"ours": ours_ir, "theirs": theirs_ir, "ratio": theirs_ir / ours_ir}
            print(f"  instructions per saga (callgrind): this {ours_ir / 1e3:,.1f}k, {args.against} "
                  f"{theirs_ir / 1e3:,.1f}k, ratio {theirs_ir / ours_ir:.2f} (aim: at least 4)")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as out:
                json.dump(result, out, indent=2)
        return 0

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
