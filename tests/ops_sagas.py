"""Sagas for the operator tests (operations, CLI, console): reserve -> charge -> ship, breakable from outside.

A step's action fails while its name is in `BROKEN` (or in the comma-separated
``CQRS_TEST_BROKEN`` environment variable, for subprocesses), and its
compensation fails while its name is in `BROKEN_COMPENSATIONS` (or
``CQRS_TEST_BROKEN_COMPENSATIONS``). ``CQRS_TEST_HOLD=step`` makes that step
print ``HOLDING <saga id>`` on stdout and wait forever (a process to SIGKILL
mid-step). Every action and compensation is appended to `CALLS` (and to the
file ``CQRS_TEST_LEDGER`` names, if set).

The CLI tests load ``--app tests.ops_sagas:sagas`` (a list) and
``tests.ops_sagas:saga_map`` (a SagaMap).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys

import cqrs
from cqrs.saga.map import SagaMap
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult

BROKEN: set[str] = set()
BROKEN_COMPENSATIONS: set[str] = set()
CALLS: list[str] = []


class StepFailed(Exception):
    """A step's action or compensation was broken on purpose."""


def _broken(names: set[str], variable: str) -> set[str]:
    return names | {name for name in os.environ.get(variable, "").split(",") if name}


def _record(call: str) -> None:
    CALLS.append(call)
    ledger = os.environ.get("CQRS_TEST_LEDGER")
    if ledger:
        with open(ledger, "a") as file:
            file.write(call + "\n")
            file.flush()
            os.fsync(file.fileno())


@dataclasses.dataclass
class ShopContext(SagaContext):
    order_id: str
    amount: float = 10.0


class Done(cqrs.Response):
    step: str


class _Step(SagaStepHandler[ShopContext, Done]):
    async def act(self, context: ShopContext) -> SagaStepResult[ShopContext, Done]:
        _record(f"act {self.name}")
        if os.environ.get("CQRS_TEST_HOLD") == self.name:
            print(f"HOLDING {context.order_id}", flush=True)
            sys.stdout.flush()
            await asyncio.Event().wait()
        if self.name in _broken(BROKEN, "CQRS_TEST_BROKEN"):
            raise StepFailed(f"{self.name} is broken")
        return self._generate_step_result(Done(step=self.name))

    async def compensate(self, context: ShopContext) -> None:
        _record(f"compensate {self.name}")
        if self.name in _broken(BROKEN_COMPENSATIONS, "CQRS_TEST_BROKEN_COMPENSATIONS"):
            raise StepFailed(f"compensation of {self.name} is broken")


class Reserve(_Step):
    name = "reserve"


class Charge(_Step):
    name = "charge"


class Ship(_Step):
    name = "ship"


class ShopSaga(Saga[ShopContext]):
    """Reserve, charge, ship."""

    steps = [Reserve, Charge, Ship]
    compensation_retry = cqrs.RetryPolicy(attempts=1)
    rerun_failed = True


@dataclasses.dataclass
class AuditContext(SagaContext):
    subject: str


class Audit(SagaStepHandler[AuditContext, Done]):
    name = "audit"

    async def act(self, context: AuditContext) -> SagaStepResult[AuditContext, Done]:
        _record("act audit")
        if self.name in _broken(BROKEN, "CQRS_TEST_BROKEN"):
            raise StepFailed("audit is broken")
        return self._generate_step_result(Done(step=self.name))

    async def compensate(self, context: AuditContext) -> None:
        _record("compensate audit")


class AuditSaga(Saga[AuditContext]):
    """One step, and its failed runs may not be re-run (``rerun_failed`` is off)."""

    steps = [Audit]


sagas = [ShopSaga, AuditSaga]
saga_map = SagaMap()
for _saga in sagas:
    saga_map.register(_saga)
not_sagas = ["just", "strings"]
