"""A three-step saga the telemetry and testing-plugin tests drive (reserve, charge, ship).

The context says where it goes wrong: ``fail_at`` names a step whose act
raises `Declined`; ``stuck`` names a step whose compensate always raises.
Each step emits a domain event; reserve's compensation emits one too.
"""

from __future__ import annotations

import dataclasses

import cqrs
from cqrs.events.event import DCDomainEvent
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.triggers import trigger

STEP_NAMES = ["reserve", "charge", "ship"]


@dataclasses.dataclass
class ShopContext(SagaContext):
    order_id: str
    fail_at: str | None = None
    stuck: str | None = None


class Declined(Exception):
    pass


class Stuck(Exception):
    pass


class StepDone(DCDomainEvent):
    order_id: str
    step: str


class ReservationReleased(DCDomainEvent):
    order_id: str


class Done(cqrs.Response):
    step: str


class _ShopStep(SagaStepHandler[ShopContext, Done]):
    name = "?"

    async def act(self, context: ShopContext) -> SagaStepResult[ShopContext, Done]:
        if context.fail_at == self.name:
            raise Declined(f"{self.name} declined order {context.order_id}")
        self._events = [StepDone(order_id=context.order_id, step=self.name)]
        return self._generate_step_result(Done(step=self.name))

    async def compensate(self, context: ShopContext) -> None:
        if context.stuck == self.name:
            raise Stuck(f"cannot undo {self.name}")


class Reserve(_ShopStep):
    name = "reserve"

    async def compensate(self, context: ShopContext) -> None:
        await super().compensate(context)
        self._events = [*getattr(self, "_events", []), ReservationReleased(order_id=context.order_id)]


class Charge(_ShopStep):
    name = "charge"


class Ship(_ShopStep):
    name = "ship"


class ShopSaga(Saga[ShopContext]):
    steps = [Reserve, Charge, Ship]

    @trigger(source="order_placed", idempotency_key="order_id")
    def from_order_placed(self, event: dict[str, str]) -> ShopContext:
        return ShopContext(order_id=event["order_id"])
