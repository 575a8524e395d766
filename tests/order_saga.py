"""The order saga the FastAPI and Flask integration tests drive (reserve, charge, ship).

Its steps report to a `StepProbe` resolved from the DI container, so each
test module can watch and hold steps with the primitives of its framework
(asyncio events for FastAPI, threading events for Flask).
"""

from __future__ import annotations

import abc
import dataclasses

import cqrs
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult

STEP_NAMES = ["reserve", "charge", "ship"]


class StepProbe(abc.ABC):
    """What the steps report to: each step's visit, and which steps were compensated."""

    def __init__(self) -> None:
        self.compensated: list[str] = []

    @abc.abstractmethod
    async def visit(self, step: str) -> None:
        """Called as a step starts; may wait (to hold the saga in that step)."""


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    amount: float
    fail_payment: bool = False
    reservation_id: str | None = None
    payment_id: str | None = None


class Reserved(cqrs.Response):
    reservation_id: str


class Charged(cqrs.Response):
    payment_id: str


class Shipped(cqrs.Response):
    tracking: str


class PaymentDeclined(Exception):
    pass


class Reserve(SagaStepHandler[OrderContext, Reserved]):
    name = "reserve"

    def __init__(self, probe: StepProbe) -> None:
        self.probe = probe

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reserved]:
        await self.probe.visit("reserve")
        context.reservation_id = f"res-{context.order_id}"
        return self._generate_step_result(Reserved(reservation_id=context.reservation_id))

    async def compensate(self, context: OrderContext) -> None:
        self.probe.compensated.append("reserve")


class Charge(SagaStepHandler[OrderContext, Charged]):
    name = "charge"

    def __init__(self, probe: StepProbe) -> None:
        self.probe = probe

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Charged]:
        await self.probe.visit("charge")
        if context.fail_payment:
            raise PaymentDeclined(f"card declined for {context.order_id}")
        context.payment_id = f"pay-{context.order_id}"
        return self._generate_step_result(Charged(payment_id=context.payment_id))

    async def compensate(self, context: OrderContext) -> None:
        self.probe.compensated.append("charge")


class Ship(SagaStepHandler[OrderContext, Shipped]):
    name = "ship"

    def __init__(self, probe: StepProbe) -> None:
        self.probe = probe

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Shipped]:
        await self.probe.visit("ship")
        return self._generate_step_result(Shipped(tracking=f"trk-{context.order_id}"))


class OrderSaga(Saga[OrderContext]):
    name = "order"
    steps = [Reserve, Charge, Ship]
