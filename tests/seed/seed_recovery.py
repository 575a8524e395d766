"""The seed's "Recovery Example", run against an interrupted saga of the basic example.

Everything outside the ``# --- completion`` markers is the seed's code.
"""
# --- completion: an interrupted saga with the seed's id, and the names the snippet uses
import uuid as _uuid

from seed_basic import OrderContext, OrderSaga, di_container, mediator, storage

INTERRUPTED_ID = _uuid.UUID("550e8400-e29b-41d4-a716-446655440000")


async def interrupt() -> None:
    """Run the first step of an order, then stop (as if the process went away)."""
    context = OrderContext(order_id="recover-me", items=["item_1"], total_amount=10.0)
    async for _ in mediator.stream(context, saga_id=INTERRUPTED_ID):
        break


async def main() -> None:
    await interrupt()
    # --- end completion
    from cqrs.saga.recovery import recover_saga

    # Get saga instance (or keep reference to saga class)
    saga = OrderSaga()

    # Recover interrupted saga
    saga_id = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")

    try:
        await recover_saga(
            saga=saga,
            saga_id=saga_id,
            context_builder=OrderContext,
            container=di_container,  # Same container used in bootstrap
            storage=storage,
        )
        print("Saga recovered successfully!")
    except RuntimeError:
        # Expected if saga was in COMPENSATING/FAILED state
        print("Compensation completed")

uuid = _uuid  # --- completion: the seed imports uuid at the top of the page
