"""Requirement 11: the in-memory storage keeps its own copies of everything.

The promise is every storage's, so these run on SQLite too (where copies come with the database).
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from cqrs.response import Response
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import StepEntry
from saga.helpers import EngineStorage, make_harness

SEEN: list[list[str]] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


@dataclasses.dataclass
class CartContext(SagaContext):
    cart_id: str
    items: list[str] = dataclasses.field(default_factory=list)
    prices: dict[str, float] = dataclasses.field(default_factory=dict)


class Listed(Response):
    items: list[str]


class AddStep(SagaStepHandler[CartContext, Listed]):
    async def act(self, context: CartContext) -> SagaStepResult[CartContext, Listed]:
        context.items.append("apple")
        context.prices["apple"] = 1.5
        return self._generate_step_result(Listed(items=list(context.items)))


class CheckStep(SagaStepHandler[CartContext, Response]):
    async def act(self, context: CartContext) -> SagaStepResult[CartContext, Response]:
        SEEN.append(list(context.items))
        return self._generate_step_result(Response())


class CartSaga(Saga[CartContext]):
    steps = [AddStep, CheckStep]


EXPECTED = {"cart_id": "c1", "items": ["apple"], "prices": {"apple": 1.5}}


async def test_mutating_the_context_object_after_the_run_does_not_change_stored_state(storage: EngineStorage) -> None:
    harness = make_harness((CartContext, CartSaga), storage=storage)
    saga_id = uuid.uuid4()
    context = CartContext(cart_id="c1")
    await harness.run_all(context, saga_id=saga_id)

    context.items.append("stolen")
    context.prices["apple"] = 0.0
    context.cart_id = "changed"

    status, stored, _ = await harness.storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPLETED
    assert stored == EXPECTED


async def test_mutating_a_loaded_state_dict_does_not_change_stored_state(storage: EngineStorage) -> None:
    harness = make_harness((CartContext, CartSaga), storage=storage)
    saga_id = uuid.uuid4()
    await harness.run_all(CartContext(cart_id="c1"), saga_id=saga_id)

    _, loaded, _ = await harness.storage.load_saga_state(saga_id)
    loaded["items"].append("x")
    loaded["prices"]["apple"] = 99.0
    loaded["cart_id"] = "hijacked"
    record = await harness.storage.get_saga(saga_id)
    assert record is not None
    record.context["items"].clear()

    assert (await harness.storage.load_saga_state(saga_id))[1] == EXPECTED
    record_again = await harness.storage.get_saga(saga_id)
    assert record_again is not None
    assert record_again.context == EXPECTED
    listed = await harness.storage.list_sagas()
    listed[0].context["cart_id"] = "also hijacked"
    assert (await harness.storage.load_saga_state(saga_id))[1] == EXPECTED


async def test_mutating_a_returned_history_does_not_change_the_stored_history(storage: EngineStorage) -> None:
    harness = make_harness((CartContext, CartSaga), storage=storage)
    saga_id = uuid.uuid4()
    await harness.run_all(CartContext(cart_id="c1"), saga_id=saga_id)

    history = await harness.storage.get_step_history(saga_id)
    assert history[0].response == {"items": ["apple"]}
    history[0].response["items"].append("ghost")  # type: ignore[index]
    history.clear()

    again = await harness.storage.get_step_history(saga_id)
    assert [e.step_name for e in again] == ["AddStep", "CheckStep"]
    assert again[0].response == {"items": ["apple"]}
    # Replays build responses from the stored copy too.
    replayed = await harness.run_all(CartContext(cart_id="whatever"), saga_id=saga_id)
    assert replayed[0].response == Listed(items=["apple"])


async def test_mutating_the_callers_context_while_the_saga_is_paused_changes_nothing_stored(
    storage: EngineStorage,
) -> None:
    harness = make_harness((CartContext, CartSaga), storage=storage)
    saga_id = uuid.uuid4()
    context = CartContext(cart_id="c1")

    async for _ in harness.mediator.stream(context, saga_id=saga_id):
        break
    context.items.append("sneaked in")
    context.prices.clear()

    assert (await harness.storage.load_saga_state(saga_id))[1] == EXPECTED
    await harness.run_all(CartContext(cart_id="c1"), saga_id=saga_id)
    assert SEEN == [["apple"]]


async def test_the_storage_copies_what_it_is_given_through_its_own_api(storage: EngineStorage) -> None:
    saga_id = uuid.uuid4()
    given = {"cart_id": "c9", "items": ["pear"]}
    await storage.create_saga(saga_id, "CartSaga", given)
    given["items"].append("changed after create")

    assert (await storage.load_saga_state(saga_id))[1] == {"cart_id": "c9", "items": ["pear"]}

    update = {"cart_id": "c9", "items": ["plum"]}
    await storage.update_context(saga_id, update)
    update["items"].append("changed after update")
    assert (await storage.load_saga_state(saga_id))[1] == {"cart_id": "c9", "items": ["plum"]}


async def test_checkpoint_keeps_what_the_engine_hands_over_and_hands_out_copies(storage: EngineStorage) -> None:
    """The engine's writes hand the JSON over (see the protocol); what comes back out is a copy."""
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id, "CartSaga", {})
    claim = await storage.claim_saga(saga_id, "me", 30)
    assert claim is not None and claim.lease is not None
    response = {"items": ["a"]}
    context = {"items": ["a"]}

    assert await storage.checkpoint(
        saga_id,
        claim.lease,
        entry=StepEntry("AddStep", "act", SagaStepStatus.COMPLETED, None, response),
        context=context,
        lease_seconds=30,
    )
    (entry,) = await storage.get_step_history(saga_id)
    assert entry.response == {"items": ["a"]}
    entry.response["items"].append("b")
    _, stored, _ = await storage.load_saga_state(saga_id)
    stored["items"].append("b")

    (entry,) = await storage.get_step_history(saga_id)
    assert entry.response == {"items": ["a"]}
    assert (await storage.load_saga_state(saga_id))[1] == {"items": ["a"]}


async def test_a_claims_history_is_a_copy(storage: EngineStorage) -> None:
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id, "CartSaga", {"cart_id": "c1"})
    claim = await storage.claim_saga(saga_id, "me", 30)
    assert claim is not None and claim.lease is not None
    await storage.checkpoint(
        saga_id,
        claim.lease,
        entry=StepEntry("AddStep", "act", SagaStepStatus.COMPLETED, None, {"items": ["apple"]}),
        lease_seconds=30,
    )

    again = await storage.claim_saga(saga_id, "me", 30)
    assert again is not None
    again.history[0].response["items"].append("ghost")  # type: ignore[index]
    again.record.context["cart_id"] = "hijacked"

    (entry,) = await storage.get_step_history(saga_id)
    assert entry.response == {"items": ["apple"]}
    assert (await storage.load_saga_state(saga_id))[1] == {"cart_id": "c1"}
