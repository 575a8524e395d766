"""Requirement 14: recovering a compensating saga finishes compensation and never runs forward."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import di
import pytest

from cqrs.response import Response
from cqrs.saga.exceptions import SagaCompensatedError
from cqrs.saga.models import SagaContext
from cqrs.saga.recovery import recover_saga
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from saga.helpers import EngineStorage, Gate, advance, make_harness, rows

LEASE = 30.0
LEDGER: list[str] = []
# Compensations named here block (once) on the gate, so the test can cancel them mid-way.
BLOCK_COMPENSATION: set[str] = set()
# Compensations named here fail (while named).
FAIL_COMPENSATION: set[str] = set()
GATES: list[Gate] = []
NO_RETRY = RetryPolicy(attempts=1, delay=0)


@pytest.fixture(autouse=True)
def _clear() -> None:
    LEDGER.clear()
    BLOCK_COMPENSATION.clear()
    FAIL_COMPENSATION.clear()
    GATES[:] = [Gate()]


@dataclasses.dataclass
class TransferContext(SagaContext):
    transfer_id: str
    debited: bool = False
    credited: bool = False


class _Step(SagaStepHandler[TransferContext, Response]):
    async def act(self, context: TransferContext) -> SagaStepResult[TransferContext, Response]:
        LEDGER.append(f"act:{self.name}")
        return self._generate_step_result(Response())

    async def compensate(self, context: TransferContext) -> None:
        LEDGER.append(f"compensate:{self.name}")
        if self.name in BLOCK_COMPENSATION:
            BLOCK_COMPENSATION.discard(self.name)
            await GATES[0].block()
        if self.name in FAIL_COMPENSATION:
            raise ConnectionError(f"cannot undo {self.name}")


class DebitStep(_Step):
    name = "debit"

    async def act(self, context: TransferContext) -> SagaStepResult[TransferContext, Response]:
        context.debited = True
        return await super().act(context)


class CreditStep(_Step):
    name = "credit"

    async def act(self, context: TransferContext) -> SagaStepResult[TransferContext, Response]:
        context.credited = True
        return await super().act(context)


class NotifyStep(_Step):
    name = "notify"

    async def act(self, context: TransferContext) -> SagaStepResult[TransferContext, Response]:
        LEDGER.append("act:notify")
        raise PermissionError("notification refused")


class AuditStep(_Step):
    name = "audit"


class TransferSaga(Saga[TransferContext]):
    steps = [DebitStep, CreditStep, NotifyStep, AuditStep]


async def _fail_and_cancel_compensation_of(
    step: str, storage: EngineStorage, saga_id: uuid.UUID, compensation_commits: str = "together"
) -> None:
    BLOCK_COMPENSATION.add(step)
    harness = make_harness(
        (TransferContext, TransferSaga), storage=storage, lease_seconds=LEASE,
        compensation_commits=compensation_commits,
    )
    task = asyncio.ensure_future(harness.run_all(TransferContext(transfer_id="t1"), saga_id=saga_id))
    await GATES[0].entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelling_a_compensation_leaves_the_saga_compensating(storage: EngineStorage) -> None:
    saga_id = uuid.uuid4()

    await _fail_and_cancel_compensation_of("credit", storage, saga_id)

    status, _, _ = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPENSATING
    assert rows(await storage.get_step_history(saga_id)) == [
        ("debit", "act", "completed"),
        ("credit", "act", "completed"),
        ("notify", "act", "failed"),
    ]


async def test_recovering_a_compensating_saga_finishes_compensation_and_raises_saga_compensated(
    storage: EngineStorage,
) -> None:
    saga_id = uuid.uuid4()
    await _fail_and_cancel_compensation_of("credit", storage, saga_id)
    await advance(storage, LEASE + 1)
    assert await storage.get_sagas_for_recovery(limit=10) == [saga_id]
    LEDGER.clear()

    with pytest.raises(SagaCompensatedError) as caught:
        await recover_saga(TransferSaga(), saga_id, TransferContext, di.Container(), storage, lease_seconds=LEASE)

    assert isinstance(caught.value, RuntimeError)
    assert caught.value.saga_id == saga_id
    assert LEDGER == ["compensate:credit", "compensate:debit"]
    status, context, _ = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.FAILED
    assert context == {"transfer_id": "t1", "debited": True, "credited": True}
    assert rows(await storage.get_step_history(saga_id)) == [
        ("debit", "act", "completed"),
        ("credit", "act", "completed"),
        ("notify", "act", "failed"),
        ("credit", "compensate", "compensated"),
        ("debit", "compensate", "compensated"),
    ]
    assert await storage.get_sagas_for_recovery(limit=10) == []


async def test_recovery_does_not_compensate_a_step_already_compensated(storage: EngineStorage) -> None:
    """With one commit per compensation, the compensations recorded before a crash are not run again."""
    saga_id = uuid.uuid4()
    await _fail_and_cancel_compensation_of("debit", storage, saga_id, compensation_commits="each")
    assert LEDGER == ["act:debit", "act:credit", "act:notify", "compensate:credit", "compensate:debit"]
    await advance(storage, LEASE + 1)
    LEDGER.clear()

    with pytest.raises(RuntimeError):
        await recover_saga(TransferSaga, saga_id, TransferContext, di.Container(), storage, lease_seconds=LEASE)

    assert LEDGER == ["compensate:debit"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.FAILED


async def test_compensations_recorded_together_run_again_after_an_interruption(storage: EngineStorage) -> None:
    """The trade of the default (`EngineSettings.compensation_commits`): until the one commit that records
    them, no compensation is recorded, so recovery runs every one of them again."""
    saga_id = uuid.uuid4()
    await _fail_and_cancel_compensation_of("debit", storage, saga_id)
    assert LEDGER == ["act:debit", "act:credit", "act:notify", "compensate:credit", "compensate:debit"]
    assert [row for row in rows(await storage.get_step_history(saga_id)) if row[1] == "compensate"] == []
    await advance(storage, LEASE + 1)
    LEDGER.clear()

    with pytest.raises(RuntimeError):
        await recover_saga(TransferSaga, saga_id, TransferContext, di.Container(), storage, lease_seconds=LEASE)

    assert LEDGER == ["compensate:credit", "compensate:debit"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.FAILED


async def test_recovering_a_compensating_saga_written_through_the_storage_api(storage: EngineStorage) -> None:
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id, "TransferSaga", {"transfer_id": "t9", "debited": True, "credited": True})
    await storage.update_status(saga_id, SagaStatus.RUNNING)
    await storage.log_step(saga_id, "debit", "act", SagaStepStatus.COMPLETED)
    await storage.log_step(saga_id, "credit", "act", SagaStepStatus.COMPLETED)
    await storage.log_step(saga_id, "notify", "act", SagaStepStatus.FAILED, "PermissionError: refused")
    await storage.update_status(saga_id, SagaStatus.COMPENSATING)

    with pytest.raises(SagaCompensatedError):
        await recover_saga(TransferSaga(), saga_id, TransferContext, di.Container(), storage)

    assert LEDGER == ["compensate:credit", "compensate:debit"]
    assert not any(line.startswith("act:") for line in LEDGER)
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.FAILED


async def test_a_compensating_saga_whose_compensation_still_fails_ends_compensation_failed(
    storage: EngineStorage,
) -> None:
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id, "TransferSaga", {"transfer_id": "t10", "debited": True, "credited": False})
    await storage.log_step(saga_id, "debit", "act", SagaStepStatus.COMPLETED)
    await storage.log_step(saga_id, "credit", "act", SagaStepStatus.FAILED, "boom")
    await storage.update_status(saga_id, SagaStatus.COMPENSATING)
    FAIL_COMPENSATION.add("debit")

    with pytest.raises(RuntimeError):
        await recover_saga(
            TransferSaga, saga_id, TransferContext, di.Container(), storage, compensation_retry=NO_RETRY
        )

    assert LEDGER == ["compensate:debit"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.COMPENSATION_FAILED


async def test_recovering_compensation_failed_retries_only_the_failed_compensation(storage: EngineStorage) -> None:
    harness = make_harness(
        (TransferContext, TransferSaga), storage=storage, compensation_retry_count=1
    )
    saga_id = uuid.uuid4()
    FAIL_COMPENSATION.add("debit")
    with pytest.raises(PermissionError):
        await harness.run_all(TransferContext(transfer_id="t11"), saga_id=saga_id)
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.COMPENSATION_FAILED
    FAIL_COMPENSATION.clear()
    LEDGER.clear()

    with pytest.raises(SagaCompensatedError):
        await recover_saga(TransferSaga, saga_id, TransferContext, di.Container(), storage)

    assert LEDGER == ["compensate:debit"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.FAILED


async def test_streaming_a_compensating_saga_again_finishes_compensation_without_running_forward(
    storage: EngineStorage,
) -> None:
    saga_id = uuid.uuid4()
    await _fail_and_cancel_compensation_of("credit", storage, saga_id)
    await advance(storage, LEASE + 1)
    LEDGER.clear()
    harness = make_harness((TransferContext, TransferSaga), storage=storage, lease_seconds=LEASE)

    with pytest.raises(RuntimeError):
        await harness.run_all(TransferContext(transfer_id="other"), saga_id=saga_id)

    assert LEDGER == ["compensate:credit", "compensate:debit"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.FAILED


class StubbornTransferSaga(Saga[TransferContext]):
    """Its own compensation policy: three tries, no wait (so nothing sleeps even with the real sleep)."""

    name = "stubborn-transfer"
    steps = [DebitStep, CreditStep, NotifyStep]
    compensation_retry = RetryPolicy(attempts=3, delay=0.0)


async def _stubborn_compensating_saga(storage: EngineStorage) -> uuid.UUID:
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id, "stubborn-transfer", {"transfer_id": "t12", "debited": True})
    await storage.log_step(saga_id, "debit", "act", SagaStepStatus.COMPLETED)
    await storage.log_step(saga_id, "credit", "act", SagaStepStatus.FAILED, "boom")
    await storage.update_status(saga_id, SagaStatus.COMPENSATING)
    return saga_id


async def test_recovery_uses_the_sagas_own_compensation_retry(storage: EngineStorage) -> None:
    saga_id = await _stubborn_compensating_saga(storage)
    FAIL_COMPENSATION.add("debit")

    with pytest.raises(SagaCompensatedError):
        await recover_saga(StubbornTransferSaga, saga_id, TransferContext, di.Container(), storage)

    assert LEDGER == ["compensate:debit"] * 3
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.COMPENSATION_FAILED


async def test_recover_sagas_explicit_compensation_retry_beats_the_sagas_own(storage: EngineStorage) -> None:
    saga_id = await _stubborn_compensating_saga(storage)
    FAIL_COMPENSATION.add("debit")

    with pytest.raises(SagaCompensatedError):
        await recover_saga(
            StubbornTransferSaga, saga_id, TransferContext, di.Container(), storage, compensation_retry=NO_RETRY
        )

    assert LEDGER == ["compensate:debit"]
