"""The order saga of the Flask example: reserve inventory, charge payment, ship.

The services are in-memory stand-ins. A payment over ``PAYMENT_LIMIT`` is
declined, so the saga fails and the reservation is released (compensation).
"""

from __future__ import annotations

import dataclasses
import logging
import typing

import di
import pydantic
from di.dependent import Dependent

import cqrs
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult

logger = logging.getLogger("orders")

PAYMENT_LIMIT = 10_000.0


class PaymentDeclined(Exception):
    """The payment provider said no: a business failure, so the saga compensates."""


# -- services (in-memory stand-ins; they run on the saga loop thread only) -----------------------------


class Inventory:
    def __init__(self) -> None:
        self.reserved: dict[str, dict[str, int]] = {}

    async def reserve(self, order_id: str, items: dict[str, int]) -> str:
        reservation_id = f"res-{order_id}"
        self.reserved[reservation_id] = dict(items)
        return reservation_id

    async def release(self, reservation_id: str) -> None:
        self.reserved.pop(reservation_id, None)


class Payments:
    def __init__(self) -> None:
        self.charged: dict[str, float] = {}

    async def charge(self, order_id: str, user_id: str, amount: float) -> str:
        if amount > PAYMENT_LIMIT:
            raise PaymentDeclined(f"card of {user_id} declined for order {order_id} ({amount:.2f})")
        payment_id = f"pay-{order_id}"
        self.charged[payment_id] = amount
        return payment_id

    async def refund(self, payment_id: str) -> None:
        self.charged.pop(payment_id, None)


class Shipping:
    async def ship(self, order_id: str) -> str:
        return f"trk-{order_id}"


# -- the request body and the saga's context -------------------------------------------------------------

OrderId = typing.Annotated[str, pydantic.Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


@dataclasses.dataclass
class Item:
    id: str
    name: str
    quantity: typing.Annotated[int, pydantic.Field(gt=0)]


@dataclasses.dataclass
class OrderRequest:
    """The body of ``POST /orders``."""

    order_id: OrderId
    user_id: str
    items: typing.Annotated[list[Item], pydantic.Field(min_length=1)]
    amount: typing.Annotated[float, pydantic.Field(ge=0)]


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    user_id: str
    items: list[Item]
    amount: float
    reservation_id: str | None = None
    payment_id: str | None = None
    tracking_number: str | None = None

    @classmethod
    def from_request(cls, request: OrderRequest) -> OrderContext:
        return cls(order_id=request.order_id, user_id=request.user_id, items=list(request.items), amount=request.amount)


class Reserved(cqrs.Response):
    reservation_id: str


class Charged(cqrs.Response):
    payment_id: str
    amount: float


class Shipped(cqrs.Response):
    tracking_number: str


# -- steps ----------------------------------------------------------------------------------------------


class ReserveInventory(SagaStepHandler[OrderContext, Reserved]):
    name = "reserve_inventory"

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reserved]:
        quantities = {item.id: item.quantity for item in context.items}
        context.reservation_id = await self.inventory.reserve(context.order_id, quantities)
        logger.info("order %s: reserved %s", context.order_id, quantities)
        return self._generate_step_result(Reserved(reservation_id=context.reservation_id))

    async def compensate(self, context: OrderContext) -> None:
        if context.reservation_id:
            await self.inventory.release(context.reservation_id)
            logger.info("order %s: released reservation %s", context.order_id, context.reservation_id)


class ChargePayment(SagaStepHandler[OrderContext, Charged]):
    name = "charge_payment"

    def __init__(self, payments: Payments) -> None:
        self.payments = payments

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Charged]:
        context.payment_id = await self.payments.charge(context.order_id, context.user_id, context.amount)
        logger.info("order %s: charged %.2f to %s", context.order_id, context.amount, context.user_id)
        return self._generate_step_result(Charged(payment_id=context.payment_id, amount=context.amount))

    async def compensate(self, context: OrderContext) -> None:
        if context.payment_id:
            await self.payments.refund(context.payment_id)
            logger.info("order %s: refunded %s", context.order_id, context.payment_id)


class ShipOrder(SagaStepHandler[OrderContext, Shipped]):
    name = "ship_order"

    def __init__(self, shipping: Shipping) -> None:
        self.shipping = shipping

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Shipped]:
        context.tracking_number = await self.shipping.ship(context.order_id)
        logger.info("order %s: shipped as %s", context.order_id, context.tracking_number)
        return self._generate_step_result(Shipped(tracking_number=context.tracking_number))


class OrderSaga(Saga[OrderContext]):
    name = "order"
    steps = [ReserveInventory, ChargePayment, ShipOrder]


def build_container() -> di.Container:
    """A container with one instance of each service for the whole process."""
    container = di.Container()
    for service in (Inventory(), Payments(), Shipping()):
        container.bind(di.bind_by_type(Dependent(_provider(service), scope=None), type(service)))
    return container


def _provider(instance: object) -> typing.Callable[[], object]:
    return lambda: instance
