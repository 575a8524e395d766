"""`SagaMap`: a dict of context type to saga class (python-cqrs's), that also knows every saga by name."""

from __future__ import annotations

import dataclasses

import pytest

from cqrs.dispatcher.exceptions import SagaDoesNotExist
from cqrs.response import Response
from cqrs.saga.exceptions import SagaDefinitionError, SagaError, SagaNotBoundError
from cqrs.saga.map import SagaMap
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str = "o"


@dataclasses.dataclass
class RushOrderContext(OrderContext):
    pass


@dataclasses.dataclass
class RefundContext(SagaContext):
    refund_id: str = "r"


class Reserve(SagaStepHandler[OrderContext, Response]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Response]:
        return self._generate_step_result(Response())


class Refund(SagaStepHandler[RefundContext, Response]):
    async def act(self, context: RefundContext) -> SagaStepResult[RefundContext, Response]:
        return self._generate_step_result(Response())


class OrderSaga(Saga[OrderContext]):
    steps = [Reserve]


class OtherOrderSaga(Saga[OrderContext]):
    steps = [Reserve]


class RefundSaga(Saga[RefundContext]):
    steps = [Refund]


class RenamedRefundSaga(Saga[RefundContext]):
    name = "OrderSaga"  # taken by OrderSaga
    steps = [Refund]


def test_bound_sagas_are_found_by_context_type_and_by_name() -> None:
    saga_map = SagaMap()
    saga_map.bind(OrderContext, OrderSaga)
    saga_map[RefundContext] = RefundSaga

    assert isinstance(saga_map, dict)
    assert dict(saga_map) == {OrderContext: OrderSaga, RefundContext: RefundSaga}
    assert saga_map[OrderContext] is saga_map.saga_for(OrderContext) is OrderSaga
    assert OrderContext in saga_map and len(saga_map) == 2
    assert saga_map.by_name("OrderSaga") is OrderSaga
    assert saga_map.by_name("RefundSaga") is RefundSaga
    assert saga_map.by_name("nope") is None
    assert saga_map.sagas() == [OrderSaga, RefundSaga]


def test_binding_the_same_pair_again_changes_nothing() -> None:
    saga_map = SagaMap()
    saga_map.bind(OrderContext, OrderSaga)
    saga_map.bind(OrderContext, OrderSaga)
    saga_map[OrderContext] = OrderSaga

    assert dict(saga_map) == {OrderContext: OrderSaga}
    assert saga_map.sagas() == [OrderSaga]


@pytest.mark.parametrize("how", ["bind", "setitem"])
def test_a_context_type_bound_to_another_saga_is_a_key_error_naming_both(how: str) -> None:
    saga_map = SagaMap()
    saga_map.bind(OrderContext, OrderSaga)

    with pytest.raises(KeyError) as caught:
        if how == "bind":
            saga_map.bind(OrderContext, OtherOrderSaga)
        else:
            saga_map[OrderContext] = OtherOrderSaga

    message = str(caught.value)
    assert "OrderContext already runs OrderSaga" in message
    assert "OtherOrderSaga" in message
    assert dict(saga_map) == {OrderContext: OrderSaga}
    assert saga_map.by_name("OtherOrderSaga") is None


def test_a_context_subclass_may_run_its_own_saga() -> None:
    saga_map = SagaMap()
    saga_map.bind(OrderContext, OrderSaga)
    saga_map.bind(RushOrderContext, OtherOrderSaga)

    assert saga_map.saga_for(RushOrderContext) is OtherOrderSaga
    assert saga_map.saga_for(OrderContext) is OrderSaga


def test_a_context_type_the_saga_does_not_run_on_is_refused() -> None:
    saga_map = SagaMap()

    with pytest.raises(SagaDefinitionError, match="RefundSaga runs on RefundContext, not OrderContext"):
        saga_map.bind(OrderContext, RefundSaga)
    assert dict(saga_map) == {}


@pytest.mark.parametrize("not_a_saga", [OrderSaga(), Reserve, "OrderSaga", None])
def test_only_saga_classes_can_be_bound(not_a_saga: object) -> None:
    saga_map = SagaMap()

    with pytest.raises(SagaDefinitionError, match="expects a Saga subclass"):
        saga_map.bind(OrderContext, not_a_saga)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        saga_map[OrderContext] = not_a_saga  # type: ignore[assignment]
    assert dict(saga_map) == {}


def test_two_sagas_sharing_a_stored_name_are_refused() -> None:
    saga_map = SagaMap()
    saga_map.bind(OrderContext, OrderSaga)

    with pytest.raises(SagaDefinitionError, match="share the name 'OrderSaga'"):
        saga_map.bind(RefundContext, RenamedRefundSaga)
    assert dict(saga_map) == {OrderContext: OrderSaga}
    assert saga_map.by_name("OrderSaga") is OrderSaga


def test_an_unbound_context_type_raises_saga_not_bound() -> None:
    saga_map = SagaMap()
    saga_map.bind(OrderContext, OrderSaga)

    with pytest.raises(SagaNotBoundError) as caught:
        saga_map[RefundContext]
    with pytest.raises(SagaNotBoundError):
        saga_map.saga_for(RefundContext)

    error = caught.value
    assert error.context_type is RefundContext
    assert isinstance(error, SagaDoesNotExist)  # python-cqrs's
    assert isinstance(error, KeyError)  # a dict's
    assert isinstance(error, LookupError)
    assert isinstance(error, SagaError)
    assert "RefundContext" in str(error) and "mapper.bind(RefundContext, YourSaga)" in str(error)
    # The dict methods that do not raise still do not.
    assert saga_map.get(RefundContext) is None
    assert RefundContext not in saga_map


def test_a_subclass_of_a_bound_context_type_is_not_bound_by_it() -> None:
    saga_map = SagaMap()
    saga_map.bind(OrderContext, OrderSaga)

    with pytest.raises(SagaNotBoundError):
        saga_map.saga_for(RushOrderContext)


def test_entries_cannot_be_deleted() -> None:
    saga_map = SagaMap()
    saga_map.bind(OrderContext, OrderSaga)

    with pytest.raises(TypeError, match="no delete"):
        del saga_map[OrderContext]
    assert dict(saga_map) == {OrderContext: OrderSaga}


def test_register_names_a_saga_and_binds_its_context_type_unless_bound() -> None:
    saga_map = SagaMap()
    saga_map.bind(OrderContext, OrderSaga)

    saga_map.register(OtherOrderSaga)  # OrderContext stays with OrderSaga
    saga_map.register(RefundSaga)

    assert dict(saga_map) == {OrderContext: OrderSaga, RefundContext: RefundSaga}
    assert saga_map.by_name("OtherOrderSaga") is OtherOrderSaga
    assert saga_map.sagas() == [OrderSaga, OtherOrderSaga, RefundSaga]


def test_register_needs_a_context_type() -> None:
    class Untyped(Saga):  # type: ignore[type-arg]
        steps = [Reserve]

    with pytest.raises(SagaDefinitionError, match="declares no context type"):
        SagaMap().register(Untyped)


def test_update_binds_like_item_assignment() -> None:
    saga_map = SagaMap()

    saga_map.update({OrderContext: OrderSaga})

    assert saga_map.by_name("OrderSaga") is OrderSaga
