"""The order saga: reserve stock, charge the card, ship; undone in reverse when a step fails.

The services are in-memory stand-ins for real ones. Payments over 10,000 are
declined, so an order for more shows the compensation (the stock is released).
"""

from __future__ import annotations

import dataclasses
import logging
import typing

import di
from di.dependent import Dependent

import cqrs
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult

logger = logging.getLogger("orders.sagas")

PAYMENT_LIMIT = 10_000.0


class PaymentDeclined(Exception):
    """The card was declined: a business failure, so the saga compensates."""


@dataclasses.dataclass
class OrderItem:
    id: str
    name: str
    quantity: int


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    user_id: str
    items: list[OrderItem]
    amount: float
    reservation_id: str | None = None
    payment_id: str | None = None
    tracking_number: str | None = None


# -- services (stand-ins) ---------------------------------------------------------------------


class Inventory:
    def __init__(self) -> None:
        self.reserved: dict[str, list[OrderItem]] = {}

    async def reserve(self, order_id: str, items: list[OrderItem]) -> str:
        reservation = f"res-{order_id}"
        self.reserved[reservation] = items
        return reservation

    async def release(self, reservation: str) -> None:
        self.reserved.pop(reservation, None)


class Payments:
    async def charge(self, user_id: str, amount: float) -> str:
        if amount > PAYMENT_LIMIT:
            raise PaymentDeclined(f"card of {user_id} declined for {amount:.2f}")
        return f"pay-{user_id}-{int(amount * 100)}"

    async def refund(self, payment_id: str) -> None:
        return None


class Shipping:
    async def schedule(self, order_id: str) -> str:
        return f"trk-{order_id}"


# -- steps -------------------------------------------------------------------------------------


class Reserved(cqrs.Response):
    reservation_id: str


class Charged(cqrs.Response):
    payment_id: str


class Shipped(cqrs.Response):
    tracking_number: str


class ReserveInventory(SagaStepHandler[OrderContext, Reserved]):
    name = "reserve_inventory"

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reserved]:
        context.reservation_id = await self.inventory.reserve(context.order_id, context.items)
        logger.info("order %s: reserved %d item(s)", context.order_id, len(context.items))
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
        context.payment_id = await self.payments.charge(context.user_id, context.amount)
        logger.info("order %s: charged %.2f", context.order_id, context.amount)
        return self._generate_step_result(Charged(payment_id=context.payment_id))

    async def compensate(self, context: OrderContext) -> None:
        if context.payment_id:
            await self.payments.refund(context.payment_id)


class ShipOrder(SagaStepHandler[OrderContext, Shipped]):
    name = "ship_order"

    def __init__(self, shipping: Shipping) -> None:
        self.shipping = shipping

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Shipped]:
        context.tracking_number = await self.shipping.schedule(context.order_id)
        logger.info("order %s: shipped as %s", context.order_id, context.tracking_number)
        return self._generate_step_result(Shipped(tracking_number=context.tracking_number))


class OrderSaga(Saga[OrderContext]):
    steps = [ReserveInventory, ChargePayment, ShipOrder]


def build_container() -> di.Container:
    """``CQRS_SAGA["CONTAINER"]``: one instance of each service for the process."""
    container = di.Container()
    for service in (Inventory(), Payments(), Shipping()):
        container.bind(di.bind_by_type(Dependent(_provider(service), scope=None), type(service)))
    return container


def _provider(instance: object) -> typing.Callable[[], object]:
    return lambda: instance
