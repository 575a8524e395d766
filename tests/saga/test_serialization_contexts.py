"""Requirement 3: dataclass and pydantic contexts, stored as JSON under their own field names."""

from __future__ import annotations

import dataclasses
import datetime
import threading
import typing
import uuid

import pydantic
import pytest

from cqrs.response import Response
from cqrs.saga.exceptions import ContextSerializationError
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage, make_harness

RAN: list[str] = []
SEEN_BY_STEP_TWO: list[dict[str, typing.Any]] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()
    SEEN_BY_STEP_TWO.clear()


# -- a dataclass context ---------------------------------------------------------------


@dataclasses.dataclass
class Address:
    city: str
    zip_code: str


@dataclasses.dataclass
class ShipmentContext(SagaContext):
    shipment_id: uuid.UUID
    address: Address
    parcels: list[int]
    booked_at: datetime.datetime | None = None
    label: str | None = None


class BookStep(SagaStepHandler[ShipmentContext, Response]):
    async def act(self, context: ShipmentContext) -> SagaStepResult[ShipmentContext, Response]:
        RAN.append("book")
        context.booked_at = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
        context.parcels.append(3)
        return self._generate_step_result(Response())


class LabelStep(SagaStepHandler[ShipmentContext, Response]):
    async def act(self, context: ShipmentContext) -> SagaStepResult[ShipmentContext, Response]:
        RAN.append("label")
        SEEN_BY_STEP_TWO.append(
            {
                "address": context.address,
                "shipment_id": context.shipment_id,
                "booked_at": context.booked_at,
                "parcels": list(context.parcels),
            }
        )
        context.label = f"{context.address.city}-{len(context.parcels)}"
        return self._generate_step_result(Response())


class ShipmentSaga(Saga[ShipmentContext]):
    steps = [BookStep, LabelStep]


async def test_dataclass_context_is_stored_as_json_under_its_field_names(storage: EngineStorage) -> None:
    harness = make_harness((ShipmentContext, ShipmentSaga), storage=storage)
    shipment_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    saga_id = uuid.uuid4()

    await harness.run_all(ShipmentContext(shipment_id, Address("Oslo", "0150"), [1, 2]), saga_id=saga_id)

    status, stored, _ = await harness.storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPLETED
    assert stored == {
        "shipment_id": "12345678-1234-5678-1234-567812345678",
        "address": {"city": "Oslo", "zip_code": "0150"},
        "parcels": [1, 2, 3],
        "booked_at": "2030-01-02T03:04:05Z",
        "label": "Oslo-3",
    }


async def test_dataclass_context_comes_back_typed_when_a_paused_saga_resumes(storage: EngineStorage) -> None:
    harness = make_harness((ShipmentContext, ShipmentSaga), storage=storage)
    shipment_id = uuid.uuid4()
    saga_id = uuid.uuid4()

    async for _ in harness.mediator.stream(
        ShipmentContext(shipment_id, Address("Oslo", "0150"), [1]), saga_id=saga_id
    ):
        break
    await harness.run_all(ShipmentContext(uuid.uuid4(), Address("x", "y"), []), saga_id=saga_id)

    assert RAN == ["book", "label"]
    (seen,) = SEEN_BY_STEP_TWO
    assert seen["address"] == Address("Oslo", "0150")
    assert seen["shipment_id"] == shipment_id
    assert seen["booked_at"] == datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert seen["parcels"] == [1, 3]


# -- a pydantic context with an alias ---------------------------------------------------------


class CustomerContext(pydantic.BaseModel):
    customer_name: str = pydantic.Field(alias="customerName")
    credit: int = 0
    tags: list[str] = []
    greeting: str | None = None


class CreditStep(SagaStepHandler[CustomerContext, Response]):
    async def act(self, context: CustomerContext) -> SagaStepResult[CustomerContext, Response]:
        RAN.append("credit")
        context.credit += 10
        context.tags.append("vip")
        return self._generate_step_result(Response())


class GreetStep(SagaStepHandler[CustomerContext, Response]):
    async def act(self, context: CustomerContext) -> SagaStepResult[CustomerContext, Response]:
        RAN.append("greet")
        SEEN_BY_STEP_TWO.append({"customer_name": context.customer_name, "credit": context.credit})
        context.greeting = f"hello {context.customer_name}"
        return self._generate_step_result(Response())


class CustomerSaga(Saga[CustomerContext]):
    steps = [CreditStep, GreetStep]


async def test_pydantic_context_is_stored_under_field_names_not_aliases(storage: EngineStorage) -> None:
    harness = make_harness((CustomerContext, CustomerSaga), storage=storage)
    saga_id = uuid.uuid4()
    context = CustomerContext(customerName="Ada")

    await harness.run_all(context, saga_id=saga_id)

    status, stored, _ = await harness.storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPLETED
    assert stored == {"customer_name": "Ada", "credit": 10, "tags": ["vip"], "greeting": "hello Ada"}
    assert "customerName" not in stored
    assert context.greeting == "hello Ada"


async def test_pydantic_context_with_alias_is_reloaded_from_field_names_on_resume(storage: EngineStorage) -> None:
    harness = make_harness((CustomerContext, CustomerSaga), storage=storage)
    saga_id = uuid.uuid4()

    async for _ in harness.mediator.stream(CustomerContext(customerName="Grace"), saga_id=saga_id):
        break
    _, stored, _ = await harness.storage.load_saga_state(saga_id)
    assert stored["customer_name"] == "Grace"

    await harness.run_all(CustomerContext(customerName="Somebody else"), saga_id=saga_id)

    assert RAN == ["credit", "greet"]
    assert SEEN_BY_STEP_TWO == [{"customer_name": "Grace", "credit": 10}]
    assert (await harness.storage.load_saga_state(saga_id))[1]["greeting"] == "hello Grace"


# -- contexts that cannot be stored ------------------------------------------------------------


@dataclasses.dataclass
class LockContext(SagaContext):
    order_id: str
    lock: typing.Any = None


@dataclasses.dataclass
class ListContext(SagaContext):
    order_id: str
    items: list[typing.Any] = dataclasses.field(default_factory=list)


class LockedStep(SagaStepHandler[LockContext, Response]):
    async def act(self, context: LockContext) -> SagaStepResult[LockContext, Response]:
        RAN.append("locked")
        return self._generate_step_result(Response())


class ListStep(SagaStepHandler[ListContext, Response]):
    async def act(self, context: ListContext) -> SagaStepResult[ListContext, Response]:
        RAN.append("list")
        return self._generate_step_result(Response())


class LockSaga(Saga[LockContext]):
    steps = [LockedStep]


class ListSaga(Saga[ListContext]):
    steps = [ListStep]


class PydanticObjectContext(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)

    order_id: str
    handle: typing.Any = None


class PydanticObjectStep(SagaStepHandler[PydanticObjectContext, Response]):
    async def act(self, context: PydanticObjectContext) -> SagaStepResult[PydanticObjectContext, Response]:
        RAN.append("pydantic")
        return self._generate_step_result(Response())


class PydanticObjectSaga(Saga[PydanticObjectContext]):
    steps = [PydanticObjectStep]


@pytest.mark.parametrize(
    ("context", "field"),
    [
        (LockContext(order_id="o1", lock=threading.Lock()), "lock"),
        (ListContext(order_id="o1", items=["fine", object()]), "items[1]"),
        (PydanticObjectContext(order_id="o1", handle=threading.Lock()), "handle"),
    ],
    ids=["lock-field", "object-in-list", "pydantic-field"],
)
async def test_unserialisable_context_is_refused_before_any_step_runs(
    context: typing.Any,
    field: str,
    storage: EngineStorage,
) -> None:
    harness = make_harness(
        (LockContext, LockSaga), (ListContext, ListSaga), (PydanticObjectContext, PydanticObjectSaga), storage=storage
    )
    saga_id = uuid.uuid4()

    with pytest.raises(ContextSerializationError) as caught:
        await harness.run_all(context, saga_id=saga_id)

    assert caught.value.field == field
    assert repr(field) in str(caught.value)
    assert RAN == []
    assert await harness.storage.get_saga(saga_id) is None
    assert await harness.storage.list_sagas() == []


# -- a context that a step makes unstorable --------------------------------------------------


@dataclasses.dataclass
class SpoilContext(SagaContext):
    order_id: str
    handle: typing.Any = None


class ReserveForSpoil(SagaStepHandler[SpoilContext, Response]):
    async def act(self, context: SpoilContext) -> SagaStepResult[SpoilContext, Response]:
        RAN.append("reserve")
        return self._generate_step_result(Response())

    async def compensate(self, context: SpoilContext) -> None:
        RAN.append("unreserve")


class SpoilStep(SagaStepHandler[SpoilContext, Response]):
    async def act(self, context: SpoilContext) -> SagaStepResult[SpoilContext, Response]:
        RAN.append("spoil")
        context.handle = threading.Lock()
        return self._generate_step_result(Response())

    async def compensate(self, context: SpoilContext) -> None:
        RAN.append("unspoil")


class NeverReached(SagaStepHandler[SpoilContext, Response]):
    async def act(self, context: SpoilContext) -> SagaStepResult[SpoilContext, Response]:
        RAN.append("never")
        return self._generate_step_result(Response())


class SpoilSaga(Saga[SpoilContext]):
    steps = [ReserveForSpoil, SpoilStep, NeverReached]


async def test_a_step_that_makes_the_context_unstorable_fails_and_is_compensated_with_the_others(
    storage: EngineStorage,
) -> None:
    harness = make_harness((SpoilContext, SpoilSaga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(ContextSerializationError) as caught:
        await harness.run_all(SpoilContext(order_id="o9"), saga_id=saga_id)

    assert caught.value.field == "handle"
    assert RAN == ["reserve", "spoil", "unspoil", "unreserve"]
    assert await harness.status(saga_id) == SagaStatus.FAILED
    # The last storable context is kept.
    assert (await harness.storage.load_saga_state(saga_id))[1] == {"order_id": "o9", "handle": None}
