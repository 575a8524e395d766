"""Test sagas: one that echoes (and notes the correlation id its step sees), a slow one, a stubborn one."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import cqrs
from cqrs.correlation import get_correlation_id
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult

logger = logging.getLogger("django_project.sagas")


@dataclasses.dataclass
class EchoContext(SagaContext):
    text: str
    fail: bool = False
    echoed: str | None = None


class Echoed(cqrs.Response):
    text: str
    correlation_id: str | None


class Echo(SagaStepHandler[EchoContext, Echoed]):
    name = "echo"

    async def act(self, context: EchoContext) -> SagaStepResult[EchoContext, Echoed]:
        context.echoed = context.text.upper()
        logger.info("echo %s", context.text)
        return self._generate_step_result(Echoed(text=context.echoed, correlation_id=get_correlation_id()))


class Check(SagaStepHandler[EchoContext, Echoed]):
    name = "check"

    async def act(self, context: EchoContext) -> SagaStepResult[EchoContext, Echoed]:
        if context.fail:
            raise ValueError(f"refusing {context.text!r}")
        return self._generate_step_result(Echoed(text="ok", correlation_id=get_correlation_id()))


class EchoSaga(Saga[EchoContext]):
    steps = [Echo, Check]


@dataclasses.dataclass
class SlowContext(SagaContext):
    seconds: float
    done: bool = False
    started: float = 0.0  # wall-clock times of the nap, so tests can tell overlap from sequence
    finished: float = 0.0


class Nap(SagaStepHandler[SlowContext, Echoed]):
    name = "nap"

    async def act(self, context: SlowContext) -> SagaStepResult[SlowContext, Echoed]:
        context.started = time.time()
        await asyncio.sleep(context.seconds)
        context.finished = time.time()
        context.done = True
        return self._generate_step_result(Echoed(text="rested", correlation_id=get_correlation_id()))


class SlowSaga(Saga[SlowContext]):
    steps = [Nap]


@dataclasses.dataclass
class StubbornContext(SagaContext):
    label: str


class Grab(SagaStepHandler[StubbornContext, Echoed]):
    """Acts, but can never be undone."""

    name = "grab"

    async def act(self, context: StubbornContext) -> SagaStepResult[StubbornContext, Echoed]:
        return self._generate_step_result(Echoed(text="grabbed", correlation_id=None))

    async def compensate(self, context: StubbornContext) -> None:
        raise RuntimeError("cannot give it back")


class Trip(SagaStepHandler[StubbornContext, Echoed]):
    name = "trip"

    async def act(self, context: StubbornContext) -> SagaStepResult[StubbornContext, Echoed]:
        raise RuntimeError("tripped")


class StubbornSaga(Saga[StubbornContext]):
    """Ends ``compensation_failed``: its first step's compensation always fails."""

    steps = [Grab, Trip]
