"""Requirement 7: cancellation is not a failure; recovery later finishes the saga."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import di
import pytest

from cqrs.response import Response
from cqrs.saga.models import SagaContext
from cqrs.saga.recovery import recover_saga
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage, Gate, advance, make_harness

LEDGER: list[str] = []
GATES: list[Gate] = []

LEASE_SECONDS = 30.0


@pytest.fixture(autouse=True)
def _clear() -> None:
    LEDGER.clear()
    GATES[:] = [Gate()]


@dataclasses.dataclass
class ImportContext(SagaContext):
    batch: str
    rows: int = 0
    published: bool = False


class Loaded(Response):
    rows: int


class FetchStep(SagaStepHandler[ImportContext, Response]):
    async def act(self, context: ImportContext) -> SagaStepResult[ImportContext, Response]:
        LEDGER.append("act:fetch")
        return self._generate_step_result(Response())

    async def compensate(self, context: ImportContext) -> None:
        LEDGER.append("compensate:fetch")


class LoadStep(SagaStepHandler[ImportContext, Loaded]):
    async def act(self, context: ImportContext) -> SagaStepResult[ImportContext, Loaded]:
        LEDGER.append("act:load")
        if LEDGER.count("act:load") == 1:
            # The first attempt hangs until the test cancels it.
            await GATES[0].block()
        context.rows = 42
        return self._generate_step_result(Loaded(rows=context.rows))

    async def compensate(self, context: ImportContext) -> None:
        LEDGER.append("compensate:load")


class PublishStep(SagaStepHandler[ImportContext, Response]):
    async def act(self, context: ImportContext) -> SagaStepResult[ImportContext, Response]:
        LEDGER.append(f"act:publish rows={context.rows} batch={context.batch}")
        context.published = True
        return self._generate_step_result(Response())


class ImportSaga(Saga[ImportContext]):
    steps = [FetchStep, LoadStep, PublishStep]


async def _start_and_cancel_in_load(storage: EngineStorage, saga_id: uuid.UUID) -> None:
    harness = make_harness((ImportContext, ImportSaga), storage=storage, lease_seconds=LEASE_SECONDS)
    task = asyncio.ensure_future(harness.run_all(ImportContext(batch="b1"), saga_id=saga_id))
    await GATES[0].entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelling_inside_a_step_propagates_and_compensates_nothing(storage: EngineStorage) -> None:
    saga_id = uuid.uuid4()

    await _start_and_cancel_in_load(storage, saga_id)

    assert LEDGER == ["act:fetch", "act:load"]
    status, context, _ = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.RUNNING
    assert context == {"batch": "b1", "rows": 0, "published": False}
    history = await storage.get_step_history(saga_id)
    assert [(e.step_name, e.action, e.status) for e in history] == [("FetchStep", "act", "completed")]


async def test_the_cancelled_saga_is_recoverable_only_after_its_lease_expires(storage: EngineStorage) -> None:
    saga_id = uuid.uuid4()

    await _start_and_cancel_in_load(storage, saga_id)

    assert await storage.get_sagas_for_recovery(limit=10) == []
    await advance(storage, LEASE_SECONDS - 1)
    assert await storage.get_sagas_for_recovery(limit=10) == []
    await advance(storage, 2)
    assert await storage.get_sagas_for_recovery(limit=10) == [saga_id]


async def test_recover_saga_after_the_lease_expires_reruns_only_the_interrupted_step(storage: EngineStorage) -> None:
    saga_id = uuid.uuid4()
    await _start_and_cancel_in_load(storage, saga_id)

    await advance(storage, LEASE_SECONDS + 1)
    await recover_saga(
        ImportSaga(), saga_id, ImportContext, di.Container(), storage, lease_seconds=LEASE_SECONDS
    )

    assert LEDGER == ["act:fetch", "act:load", "act:load", "act:publish rows=42 batch=b1"]
    assert "compensate:fetch" not in LEDGER
    status, context, _ = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPLETED
    assert context == {"batch": "b1", "rows": 42, "published": True}
    history = await storage.get_step_history(saga_id)
    assert [(e.step_name, e.action, e.status) for e in history] == [
        ("FetchStep", "act", "completed"),
        ("LoadStep", "act", "completed"),
        ("PublishStep", "act", "completed"),
    ]
    assert await storage.get_sagas_for_recovery(limit=10) == []


async def test_recover_saga_accepts_a_context_builder_function(storage: EngineStorage) -> None:
    saga_id = uuid.uuid4()
    await _start_and_cancel_in_load(storage, saga_id)
    built_from: list[dict[str, object]] = []

    def build(data: dict[str, object]) -> ImportContext:
        built_from.append(dict(data))
        return ImportContext(batch=f"{data['batch']}-rebuilt", rows=int(str(data["rows"])))

    await advance(storage, LEASE_SECONDS + 1)
    await recover_saga(ImportSaga, saga_id, build, di.Container(), storage, lease_seconds=LEASE_SECONDS)

    assert built_from == [{"batch": "b1", "rows": 0, "published": False}]
    assert LEDGER[-1] == "act:publish rows=42 batch=b1-rebuilt"
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.COMPLETED
