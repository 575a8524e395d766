"""The order service's saga: reserve the items, charge the card, ship; undone in reverse when a step fails.

The same order service (payload, routes, validation, saga) is in each of
``examples/fastapi_app``, ``examples/flask_app`` and ``examples/django_app``,
so the frameworks can be compared side by side; each example is complete on
its own. The services are in-memory stand-ins: a payment over
``PAYMENT_LIMIT`` is declined (the saga fails and the reservation is
released), and ``ship_delay`` makes shipping take that many seconds (to watch
a stream, or stop the server mid-saga and see it finished after a restart).
"""

from __future__ import annotations

import asyncio
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
MAX_SHIP_DELAY = 30.0


class PaymentDeclined(Exception):
    """The payment provider said no: a business failure, so the saga compensates."""


# -- the request body ----------------------------------------------------------------------------------


class OrderItemIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="forbid")

    sku: str = pydantic.Field(min_length=1, max_length=64)
    quantity: int = pydantic.Field(ge=1, le=10_000)


class OrderRequest(pydantic.BaseModel):
    """The body of ``POST /orders``, ``/orders/wait`` and ``/orders/stream``; strict: ``"9.5"`` is no amount."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")

    order_id: str = pydantic.Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    user_id: str = pydantic.Field(min_length=1, max_length=64)
    items: list[OrderItemIn] = pydantic.Field(min_length=1, max_length=100)
    amount: float = pydantic.Field(gt=0, le=1_000_000, allow_inf_nan=False)
    ship_delay: float = pydantic.Field(default=0.0, ge=0, le=MAX_SHIP_DELAY, allow_inf_nan=False)


# -- the saga's context --------------------------------------------------------------------------------


@dataclasses.dataclass
class OrderItem:
    sku: str
    quantity: int


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    user_id: str
    items: list[OrderItem]
    amount: float
    ship_delay: float = 0.0
    reservation_id: str | None = None
    payment_id: str | None = None
    tracking_number: str | None = None

    @classmethod
    def from_request(cls, order: OrderRequest) -> OrderContext:
        return cls(
            order_id=order.order_id,
            user_id=order.user_id,
            items=[OrderItem(sku=item.sku, quantity=item.quantity) for item in order.items],
            amount=order.amount,
            ship_delay=order.ship_delay,
        )


# -- services (in-memory stand-ins; they run on the saga loop only) ----------------------------------


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
    async def ship(self, order_id: str, delay: float) -> str:
        if delay > 0:
            await asyncio.sleep(delay)
        return f"trk-{order_id}"


# -- steps --------------------------------------------------------------------------------------------


class Reserved(cqrs.Response):
    reservation_id: str


class Charged(cqrs.Response):
    payment_id: str
    amount: float


class Shipped(cqrs.Response):
    tracking_number: str


class ReserveInventory(SagaStepHandler[OrderContext, Reserved]):
    name = "reserve_inventory"

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reserved]:
        quantities = {item.sku: item.quantity for item in context.items}
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
        context.tracking_number = await self.shipping.ship(context.order_id, context.ship_delay)
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
