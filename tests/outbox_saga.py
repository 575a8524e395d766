"""The saga the outbox crash tests kill and recover: three steps, each announcing itself with a notification event.

Every run of a step's ``act`` appends ``<saga id> <step> <event id>`` to an
fsynced ledger file before it returns, so the test knows every event each
run produced, whether or not its checkpoint committed.
"""

from __future__ import annotations

import dataclasses
import os
import typing

import cqrs
from cqrs.correlation import get_saga_id
from cqrs.events.event import NotificationEvent
from cqrs.saga.map import SagaMap
from cqrs.saga.models import SagaContext
from cqrs.saga.step import SagaStepHandler, SagaStepResult

STEPS = ("reserve", "charge", "ship")


class StepDone(NotificationEvent[dict[str, typing.Any]]):
    """A step's announcement."""


@dataclasses.dataclass
class CrashContext(SagaContext):
    order: int


@dataclasses.dataclass(frozen=True)
class LedgerLine:
    saga_id: str
    step: str
    event_id: str


def read_ledger(path: str | os.PathLike[str]) -> list[LedgerLine]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [LedgerLine(*line.split()) for line in handle if line.strip()]


class Steps:
    """The container: builds the steps with the ledger they write to."""

    def __init__(self, ledger: str | os.PathLike[str]) -> None:
        self.ledger = os.fspath(ledger)

    async def resolve(self, type_: type[typing.Any]) -> typing.Any:
        step = type_()
        step.ledger = self.ledger
        return step


class _Step(SagaStepHandler[CrashContext, cqrs.Response]):
    ledger = ""

    def __init__(self) -> None:
        self._events: list[object] = []

    async def act(self, context: CrashContext) -> SagaStepResult[CrashContext, cqrs.Response]:
        event = StepDone(event_name=f"{self.name}.done", topic="orders", payload={"order": context.order})
        self._events.append(event)
        saga_id = get_saga_id()
        line = f"{saga_id} {self.name} {event.event_id}\n".encode()
        fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return self._generate_step_result(cqrs.Response())


class Reserve(_Step):
    name = "reserve"


class Charge(_Step):
    name = "charge"


class Ship(_Step):
    name = "ship"


class CrashSaga(cqrs.Saga[CrashContext]):
    name = "crash"
    steps = [Reserve, Charge, Ship]


def saga_map() -> SagaMap:
    mapping = SagaMap()
    mapping.bind(CrashContext, CrashSaga)
    return mapping
