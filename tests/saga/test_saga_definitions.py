"""Requirement 9: saga definitions are checked when the class is created; step names."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from cqrs.response import Response
from cqrs.saga.exceptions import SagaDefinitionError
from cqrs.saga.fallback import Fallback
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage, make_harness


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str = "o"
    fail: bool = False


@dataclasses.dataclass
class SpecialOrderContext(OrderContext):
    vip: bool = True


@dataclasses.dataclass
class RefundContext(SagaContext):
    refund_id: str = "r"


class ReserveStep(SagaStepHandler[OrderContext, Response]):
    name = "reserve"

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Response]:
        return self._generate_step_result(Response())


class ChargeStep(SagaStepHandler[OrderContext, Response]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Response]:
        if context.fail:
            raise RuntimeError("charge failed")
        return self._generate_step_result(Response())


class AlsoNamedReserve(SagaStepHandler[OrderContext, Response]):
    name = "reserve"

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Response]:
        return self._generate_step_result(Response())


class RefundStep(SagaStepHandler[RefundContext, Response]):
    async def act(self, context: RefundContext) -> SagaStepResult[RefundContext, Response]:
        return self._generate_step_result(Response())


class NotAStep:
    async def act(self, context: OrderContext) -> None:
        return None


def test_step_names_default_to_the_class_name_and_can_be_overridden() -> None:
    assert ChargeStep.name == "ChargeStep"
    assert ReserveStep.name == "reserve"


def test_saga_names_default_to_the_class_name_and_can_be_overridden() -> None:
    class DefaultNamed(Saga[OrderContext]):
        steps = [ChargeStep]

    class Renamed(Saga[OrderContext]):
        name = "order-v2"
        steps = [ChargeStep]

    assert DefaultNamed.name == "DefaultNamed"
    assert Renamed.name == "order-v2"


@pytest.mark.parametrize(
    "entry",
    [NotAStep, "ChargeStep", ChargeStep(), None, 42],
    ids=["plain-class", "string", "instance", "none", "int"],
)
def test_a_non_step_entry_is_rejected_naming_its_position(entry: object) -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class BadSaga(Saga[OrderContext]):
            steps = [ReserveStep, entry]

    message = str(caught.value)
    assert "BadSaga" in message
    assert "steps[1]" in message
    assert "SagaStepHandler" in message


def test_a_step_typed_for_another_context_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class MixedSaga(Saga[OrderContext]):
            steps = [ReserveStep, RefundStep]

    message = str(caught.value)
    assert "MixedSaga" in message
    assert "RefundStep" in message
    assert "RefundContext" in message
    assert "OrderContext" in message


def test_a_step_typed_for_another_context_is_rejected_inside_a_fallback() -> None:
    with pytest.raises(SagaDefinitionError, match="RefundStep"):

        class MixedFallbackSaga(Saga[OrderContext]):
            steps = [Fallback(step=ChargeStep, fallback=RefundStep)]


def test_a_step_typed_for_a_base_of_the_context_is_accepted() -> None:
    class SpecialSaga(Saga[SpecialOrderContext]):
        steps = [ReserveStep, ChargeStep]

    assert SpecialSaga.steps == (ReserveStep, ChargeStep)


def test_the_same_step_class_twice_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class TwiceSaga(Saga[OrderContext]):
            steps = [ChargeStep, ReserveStep, ChargeStep]

    message = str(caught.value)
    assert "ChargeStep" in message
    assert "more than once" in message


def test_the_same_step_class_as_a_step_and_a_fallback_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError, match="ChargeStep"):

        class SneakySaga(Saga[OrderContext]):
            steps = [ChargeStep, Fallback(step=ReserveStep, fallback=ChargeStep)]


def test_two_steps_sharing_a_name_are_rejected() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class ClashSaga(Saga[OrderContext]):
            steps = [ReserveStep, AlsoNamedReserve]

    message = str(caught.value)
    assert "'reserve'" in message
    assert "ReserveStep" in message
    assert "AlsoNamedReserve" in message


def test_a_saga_without_steps_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError, match="no steps"):

        class EmptySaga(Saga[OrderContext]):
            steps = []


def test_saga_definition_error_is_a_type_error() -> None:
    with pytest.raises(TypeError):

        class Broken(Saga[OrderContext]):
            steps = [NotAStep]


async def test_stored_history_uses_the_step_names(storage: EngineStorage) -> None:
    class NamedSaga(Saga[OrderContext]):
        steps = [ReserveStep, ChargeStep]

    harness = make_harness((OrderContext, NamedSaga), storage=storage)
    ok_id, failed_id = uuid.uuid4(), uuid.uuid4()

    await harness.run_all(OrderContext(), saga_id=ok_id)
    with pytest.raises(RuntimeError):
        await harness.run_all(OrderContext(fail=True), saga_id=failed_id)

    assert await harness.history(ok_id) == [
        ("reserve", "act", "completed"),
        ("ChargeStep", "act", "completed"),
    ]
    assert await harness.history(failed_id) == [
        ("reserve", "act", "completed"),
        ("ChargeStep", "act", "failed"),
        ("reserve", "compensate", "compensated"),
    ]
    assert (await harness.storage.get_saga(ok_id)).name == "NamedSaga"  # type: ignore[union-attr]
    assert await harness.status(failed_id) == SagaStatus.FAILED


async def test_a_paused_saga_resumes_by_step_name(storage: EngineStorage) -> None:
    class ResumableSaga(Saga[OrderContext]):
        steps = [ReserveStep, ChargeStep]

    harness = make_harness((OrderContext, ResumableSaga), storage=storage)
    saga_id = uuid.uuid4()

    async for _ in harness.mediator.stream(OrderContext(), saga_id=saga_id):
        break
    results = await harness.run_all(OrderContext(), saga_id=saga_id)

    assert [(r.step_type, r.replayed) for r in results] == [(ReserveStep, True), (ChargeStep, False)]
