"""The "Basic Saga Example" of the seed, unchanged, completed with the services it leaves out.

Lines between ``# --- completion`` markers are ours; everything else is the seed's.
"""
# --- completion: the services and the second step the seed leaves out
import di as _di
from di.dependent import Dependent as _Dependent

LEDGER: list[str] = []


class InventoryService:
    async def reserve_items(self, order_id: str, items: list[str]) -> str:
        LEDGER.append(f"reserve:{order_id}")
        return f"reservation-{order_id}"

    async def release_items(self, reservation_id: str) -> None:
        LEDGER.append(f"release:{reservation_id}")


class PaymentService:
    async def charge(self, order_id: str, amount: float) -> str:
        LEDGER.append(f"charge:{order_id}")
        return f"payment-{order_id}"

    async def refund(self, payment_id: str) -> None:
        LEDGER.append(f"refund:{payment_id}")
# --- end completion

import dataclasses
import uuid
import di

import cqrs
from cqrs.saga import bootstrap
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.saga.models import SagaContext
from cqrs.response import Response

@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    items: list[str]
    total_amount: float
    inventory_reservation_id: str | None = None
    payment_id: str | None = None

class ReserveInventoryStep(SagaStepHandler[OrderContext, Response]):
    def __init__(self, inventory_service):
        self._inventory_service = inventory_service

    async def act(self, context: OrderContext) -> SagaStepResult:
        reservation_id = await self._inventory_service.reserve_items(
            context.order_id, context.items
        )
        context.inventory_reservation_id = reservation_id
        return self._generate_step_result(Response())

    async def compensate(self, context: OrderContext) -> None:
        if context.inventory_reservation_id:
            await self._inventory_service.release_items(
                context.inventory_reservation_id
            )

# --- completion: the payment step the seed's saga lists
class ProcessPaymentStep(SagaStepHandler[OrderContext, Response]):
    def __init__(self, payment_service: PaymentService) -> None:
        self._payment_service = payment_service

    async def act(self, context: OrderContext) -> SagaStepResult:
        context.payment_id = await self._payment_service.charge(context.order_id, context.total_amount)
        return self._generate_step_result(Response())

    async def compensate(self, context: OrderContext) -> None:
        if context.payment_id:
            await self._payment_service.refund(context.payment_id)
# --- end completion

# Define saga class with steps
class OrderSaga(Saga[OrderContext]):
    steps = [ReserveInventoryStep, ProcessPaymentStep]

# Setup DI container
di_container = di.Container()
# ... register services ...
# --- completion: ReserveInventoryStep's parameter has no annotation, so bind a factory for it
di_container.bind(
    _di.bind_by_type(
        _Dependent(lambda: ReserveInventoryStep(InventoryService()), scope=None),
        ReserveInventoryStep,
    )
)
# --- end completion

# Create saga storage
storage = MemorySagaStorage()

# Register saga in SagaMap
def saga_mapper(mapper: cqrs.SagaMap) -> None:
    mapper.bind(OrderContext, OrderSaga)

# Create saga mediator using bootstrap
mediator = bootstrap.bootstrap(
    di_container=di_container,
    sagas_mapper=saga_mapper,
    saga_storage=storage,
)


async def main() -> uuid.UUID:  # --- completion: the seed's top-level awaits, in a coroutine
    # Execute saga
    context = OrderContext(order_id="123", items=["item_1"], total_amount=100.0)
    saga_id = uuid.uuid4()

    async for step_result in mediator.stream(context, saga_id=saga_id):
        print(f"Step completed: {step_result.step_type.__name__}")
    return saga_id
