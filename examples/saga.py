"""The order saga, end to end, on SQLite.

Runs one order that succeeds and one whose payment is declined, printing each
step as it completes, the compensations, what the storage recorded, and the
saga's Mermaid diagrams.

    python examples/saga.py [--db PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import pathlib
import tempfile
import uuid

import di
from di.dependent import Dependent

import cqrs
from cqrs.saga import bootstrap
from cqrs.saga.mermaid import SagaMermaid
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage


class PaymentDeclined(Exception):
    """The card was declined: a business failure, so the saga compensates."""


class Inventory:
    def __init__(self) -> None:
        self.reserved: dict[str, list[str]] = {}

    async def reserve(self, order_id: str, items: list[str]) -> str:
        reservation = f"res-{order_id}"
        self.reserved[reservation] = items
        return reservation

    async def release(self, reservation: str) -> None:
        self.reserved.pop(reservation, None)


class Payments:
    async def charge(self, order_id: str, amount: float) -> str:
        if amount > 1000:
            raise PaymentDeclined(f"card declined for {amount:.2f}")
        return f"pay-{order_id}"

    async def refund(self, payment_id: str) -> None:
        return None


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    items: list[str]
    amount: float
    reservation_id: str | None = None
    payment_id: str | None = None
    tracking_number: str | None = None


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
        return self._generate_step_result(Reserved(reservation_id=context.reservation_id))

    async def compensate(self, context: OrderContext) -> None:
        if context.reservation_id:
            await self.inventory.release(context.reservation_id)


class ChargePayment(SagaStepHandler[OrderContext, Charged]):
    name = "charge_payment"

    def __init__(self, payments: Payments) -> None:
        self.payments = payments

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Charged]:
        context.payment_id = await self.payments.charge(context.order_id, context.amount)
        return self._generate_step_result(Charged(payment_id=context.payment_id))

    async def compensate(self, context: OrderContext) -> None:
        if context.payment_id:
            await self.payments.refund(context.payment_id)


class ShipOrder(SagaStepHandler[OrderContext, Shipped]):
    name = "ship_order"

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Shipped]:
        context.tracking_number = f"trk-{context.order_id}"
        return self._generate_step_result(Shipped(tracking_number=context.tracking_number))


class OrderSaga(Saga[OrderContext]):
    steps = [ReserveInventory, ChargePayment, ShipOrder]


def build_container() -> di.Container:
    container = di.Container()
    inventory = Inventory()
    container.bind(di.bind_by_type(Dependent(lambda: inventory, scope=None), Inventory))
    return container


async def run_order(mediator: cqrs.SagaMediator, context: OrderContext) -> uuid.UUID:
    saga_id = uuid.uuid4()
    print(f"\n== order {context.order_id} (amount {context.amount:.2f}), saga {saga_id}")
    try:
        async for result in mediator.stream(context, saga_id=saga_id):
            print(f"  step {result.step_type.name:<18} -> {result.response.model_dump()}")
    except PaymentDeclined as error:
        print(f"  failed: {error}; completed steps were compensated")
    return saga_id


async def main(db_path: pathlib.Path) -> None:
    storage = SqlAlchemySagaStorage.from_url(f"sqlite+aiosqlite:///{db_path}")
    await storage.create_tables()
    try:
        mediator = bootstrap.bootstrap(
            di_container=build_container(),
            sagas_mapper=lambda mapper: mapper.bind(OrderContext, OrderSaga),
            saga_storage=storage,
            compensation_retry_delay=0.05,
        )
        ok = await run_order(mediator, OrderContext("A-100", ["book", "pen"], 42.0))
        failed = await run_order(mediator, OrderContext("A-101", ["piano"], 12_000.0))

        for saga_id in (ok, failed):
            status, _, _ = await storage.load_saga_state(saga_id)
            print(f"\nsaga {saga_id}: {status.value}")
            for entry in await storage.get_step_history(saga_id):
                print(f"  #{entry.seq:<3} {entry.action:<10} {entry.step_name:<18} {entry.status.value}")

        diagrams = SagaMermaid(OrderSaga)
        print("\n== sequence diagram\n" + diagrams.sequence())
        print("\n== the failed run\n" + diagrams.run_diagram(await storage.get_step_history(failed)))
        print(f"\nsagas are stored in {db_path}")
    finally:
        await storage.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "cqrs-saga-demo.db")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(args.db))
