"""The order saga of the FastAPI example: reserve inventory, charge payment, ship.

The services are in-memory stand-ins. ``fail_payment`` in a request makes the
payment step fail, so the reservation is released (compensation);
``ship_delay`` makes shipping take that many seconds, to watch a stream
progress or to stop the server mid-saga and see it finished anyway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import typing

import di
from di.dependent import Dependent

import cqrs
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult

logger = logging.getLogger("orders")

MAX_SHIP_DELAY = 30.0


class PaymentDeclined(Exception):
    """The payment provider said no: a business failure, so the saga compensates."""


# -- services (in-memory stand-ins) --------------------------------------------------------------------


class Inventory:
    def __init__(self) -> None:
        self.reserved: dict[str, list[str]] = {}

    async def reserve(self, order_id: str, items: list[str]) -> str:
        reservation_id = f"res-{order_id}"
        self.reserved[reservation_id] = list(items)
        return reservation_id

    async def release(self, reservation_id: str) -> None:
        self.reserved.pop(reservation_id, None)


class Payments:
    def __init__(self) -> None:
        self.charged: dict[str, float] = {}

    async def charge(self, order_id: str, amount: float, *, decline: bool) -> str:
        if decline:
            raise PaymentDeclined(f"card declined for order {order_id} ({amount:.2f})")
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


# -- the request and the saga's context --------------------------------------------------------------------


@dataclasses.dataclass
class OrderRequest:
    """The body of ``POST /orders`` and ``POST /orders/stream``."""

    order_id: str
    items: list[str]
    amount: float
    fail_payment: bool = False
    ship_delay: float = 0.0


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    items: list[str]
    amount: float
    fail_payment: bool = False
    ship_delay: float = 0.0
    reservation_id: str | None = None
    payment_id: str | None = None
    tracking_number: str | None = None

    @classmethod
    def from_request(cls, request: OrderRequest) -> OrderContext:
        return cls(
            order_id=request.order_id,
            items=list(request.items),
            amount=request.amount,
            fail_payment=request.fail_payment,
            ship_delay=min(max(request.ship_delay, 0.0), MAX_SHIP_DELAY),
        )


class Reserved(cqrs.Response):
    reservation_id: str


class Charged(cqrs.Response):
    payment_id: str
    amount: float


class Shipped(cqrs.Response):
    tracking_number: str


# -- steps --------------------------------------------------------------------


class ReserveInventory(SagaStepHandler[OrderContext, Reserved]):
    name = "reserve_inventory"

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reserved]:
        context.reservation_id = await self.inventory.reserve(context.order_id, context.items)
        logger.info("order %s: reserved %s", context.order_id, context.items)
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
        context.payment_id = await self.payments.charge(
            context.order_id, context.amount, decline=context.fail_payment
        )
        logger.info("order %s: charged %.2f", context.order_id, context.amount)
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
