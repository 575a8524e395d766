"""Requirement 8: a completed saga id runs nothing again; an unbound context type is refused."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from cqrs.response import Response
from cqrs.saga.exceptions import SagaCompensatedError, SagaNotBoundError
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage, make_harness

LEDGER: list[str] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    LEDGER.clear()


@dataclasses.dataclass
class InvoiceContext(SagaContext):
    invoice_id: str
    total: int = 0
    fail: bool = False


class Totalled(Response):
    total: int


class TotalStep(SagaStepHandler[InvoiceContext, Totalled]):
    async def act(self, context: InvoiceContext) -> SagaStepResult[InvoiceContext, Totalled]:
        LEDGER.append(f"total:{context.invoice_id}")
        context.total = 100
        return self._generate_step_result(Totalled(total=context.total))

    async def compensate(self, context: InvoiceContext) -> None:
        LEDGER.append(f"untotal:{context.invoice_id}")


class SendStep(SagaStepHandler[InvoiceContext, Response]):
    async def act(self, context: InvoiceContext) -> SagaStepResult[InvoiceContext, Response]:
        LEDGER.append(f"send:{context.invoice_id}")
        if context.fail:
            raise ConnectionError("mail server down")
        return self._generate_step_result(Response())


class InvoiceSaga(Saga[InvoiceContext]):
    steps = [TotalStep, SendStep]


@dataclasses.dataclass
class UnboundContext(SagaContext):
    value: int = 0


async def test_streaming_a_completed_saga_again_runs_nothing_and_only_replays(storage: EngineStorage) -> None:
    harness = make_harness((InvoiceContext, InvoiceSaga), storage=storage)
    saga_id = uuid.uuid4()
    await harness.run_all(InvoiceContext(invoice_id="i1"), saga_id=saga_id)
    ledger_after_first_run = list(LEDGER)
    state_after_first_run = await harness.storage.load_saga_state(saga_id)
    history_after_first_run = await harness.storage.get_step_history(saga_id)

    again = await harness.run_all(InvoiceContext(invoice_id="i1-again"), saga_id=saga_id)

    assert LEDGER == ledger_after_first_run == ["total:i1", "send:i1"]
    assert all(r.replayed for r in again)
    assert [r.step_type for r in again] in ([], [TotalStep, SendStep])
    if again:
        assert again[0].response == Totalled(total=100)
        assert all(r.saga_id == saga_id for r in again)
    assert await harness.storage.load_saga_state(saga_id) == state_after_first_run
    assert await harness.storage.get_step_history(saga_id) == history_after_first_run
    assert state_after_first_run[0] == SagaStatus.COMPLETED


async def test_executing_a_completed_saga_again_runs_nothing(storage: EngineStorage) -> None:
    harness = make_harness((InvoiceContext, InvoiceSaga), storage=storage)
    saga_id = uuid.uuid4()
    await harness.run_all(InvoiceContext(invoice_id="i2"), saga_id=saga_id)

    again = [r async for r in harness.mediator.execute(InvoiceContext(invoice_id="other"), saga_id=saga_id)]

    assert LEDGER == ["total:i2", "send:i2"]
    assert all(r.replayed for r in again)


async def test_streaming_a_failed_saga_again_runs_nothing(storage: EngineStorage) -> None:
    harness = make_harness((InvoiceContext, InvoiceSaga), storage=storage)
    saga_id = uuid.uuid4()
    with pytest.raises(ConnectionError):
        await harness.run_all(InvoiceContext(invoice_id="i3", fail=True), saga_id=saga_id)
    history_before = await harness.storage.get_step_history(saga_id)

    with pytest.raises(SagaCompensatedError):
        await harness.run_all(InvoiceContext(invoice_id="i3"), saga_id=saga_id)

    assert LEDGER == ["total:i3", "send:i3", "untotal:i3"]
    assert await harness.storage.get_step_history(saga_id) == history_before
    assert await harness.status(saga_id) == SagaStatus.FAILED


async def test_an_unbound_context_type_raises_saga_not_bound_naming_the_type(storage: EngineStorage) -> None:
    harness = make_harness((InvoiceContext, InvoiceSaga), storage=storage)

    with pytest.raises(SagaNotBoundError) as caught:
        await harness.run_all(UnboundContext())

    assert caught.value.context_type is UnboundContext
    assert "UnboundContext" in str(caught.value)
    assert LEDGER == []
    assert await harness.storage.list_sagas() == []


async def test_saga_not_bound_is_a_lookup_error_raised_by_execute_too(storage: EngineStorage) -> None:
    harness = make_harness((InvoiceContext, InvoiceSaga), storage=storage)

    with pytest.raises(LookupError, match="UnboundContext"):
        async for _ in harness.mediator.execute(UnboundContext()):
            pass
