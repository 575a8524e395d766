"""Requirement 12: the storage's python-cqrs-shaped API, and what accepts a plain `di.Container`."""

from __future__ import annotations

import dataclasses
import datetime
import uuid

import di
import pytest

from cqrs.response import Response
from cqrs.saga.models import SagaContext
from cqrs.saga.recovery import recover_saga
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from saga.helpers import ClockedMemoryStorage, EngineStorage, advance, make_harness

LEASE = 30.0
LEDGER: list[str] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    LEDGER.clear()


@dataclasses.dataclass
class PayoutContext(SagaContext):
    payout_id: str
    fail: bool = False
    paid: bool = False


class Paid(Response):
    payout_id: str


class ApproveStep(SagaStepHandler[PayoutContext, Response]):
    name = "approve"

    async def act(self, context: PayoutContext) -> SagaStepResult[PayoutContext, Response]:
        LEDGER.append(f"approve:{context.payout_id}")
        return self._generate_step_result(Response())

    async def compensate(self, context: PayoutContext) -> None:
        LEDGER.append(f"unapprove:{context.payout_id}")


class PayStep(SagaStepHandler[PayoutContext, Paid]):
    name = "pay"

    async def act(self, context: PayoutContext) -> SagaStepResult[PayoutContext, Paid]:
        LEDGER.append(f"pay:{context.payout_id}")
        if context.fail:
            raise ConnectionError("bank offline")
        context.paid = True
        return self._generate_step_result(Paid(payout_id=context.payout_id))


class PayoutSaga(Saga[PayoutContext]):
    steps = [ApproveStep, PayStep]


class OtherPayoutSaga(Saga[PayoutContext]):
    name = "other-payout"
    steps = [ApproveStep, PayStep]


def test_saga_status_is_a_str_enum_with_the_stored_values() -> None:
    assert issubclass(SagaStatus, str)
    assert {s.name: s.value for s in SagaStatus} == {
        "PENDING": "pending",
        "RUNNING": "running",
        "COMPENSATING": "compensating",
        "COMPLETED": "completed",
        "FAILED": "failed",
        "COMPENSATION_FAILED": "compensation_failed",
        "PARKED": "parked",
    }
    assert SagaStatus.COMPLETED == "completed"
    assert SagaStatus("compensating") is SagaStatus.COMPENSATING
    assert str(SagaStatus.RUNNING) == "running"
    assert f"{SagaStatus.FAILED}" == "failed"


async def test_load_saga_state_returns_status_context_dict_and_a_growing_version(storage: EngineStorage) -> None:
    harness = make_harness((PayoutContext, PayoutSaga), storage=storage)
    saga_id = uuid.uuid4()

    async for _ in harness.mediator.stream(PayoutContext(payout_id="p1"), saga_id=saga_id):
        status, context, paused_version = await harness.storage.load_saga_state(saga_id)
        assert status == SagaStatus.RUNNING
        assert context == {"payout_id": "p1", "fail": False, "paid": False}
        break
    await harness.run_all(PayoutContext(payout_id="p1"), saga_id=saga_id)

    state = await harness.storage.load_saga_state(saga_id)
    assert isinstance(state, tuple)
    status, context, version = state
    assert isinstance(status, SagaStatus)
    assert status == SagaStatus.COMPLETED
    assert context == {"payout_id": "p1", "fail": False, "paid": True}
    assert isinstance(version, int)
    assert version > paused_version


async def test_step_history_entries_have_name_action_status_timestamp_and_details(storage: EngineStorage) -> None:
    harness = make_harness((PayoutContext, PayoutSaga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(ConnectionError):
        await harness.run_all(PayoutContext(payout_id="p2", fail=True), saga_id=saga_id)

    history = await harness.storage.get_step_history(saga_id)
    assert [(e.step_name, e.action, e.status) for e in history] == [
        ("approve", "act", SagaStepStatus.COMPLETED),
        ("pay", "act", SagaStepStatus.FAILED),
        ("approve", "compensate", SagaStepStatus.COMPENSATED),
    ]
    assert [e.status.value for e in history] == ["completed", "failed", "compensated"]
    if isinstance(storage, ClockedMemoryStorage):  # its clock stands still: every entry has its time
        assert all(e.timestamp == storage.clock.now for e in history)
    else:  # the database's clock: aware, in write order, and of this run
        stamps = [e.timestamp for e in history]
        assert all(t.tzinfo is not None for t in stamps)
        assert stamps == sorted(stamps)
        assert abs(stamps[0] - datetime.datetime.now(datetime.timezone.utc)) < datetime.timedelta(minutes=1)
    assert all(e.saga_id == saga_id for e in history)
    assert history[0].details is None
    assert history[1].details == "ConnectionError: bank offline"
    assert [e.seq for e in history] == sorted(e.seq for e in history)


async def test_get_sagas_for_recovery_returns_only_interrupted_sagas_once_their_lease_lapsed(
    storage: EngineStorage,
) -> None:
    harness = make_harness((PayoutContext, PayoutSaga), storage=storage, lease_seconds=LEASE)
    completed, failed, paused = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    await harness.run_all(PayoutContext(payout_id="done"), saga_id=completed)
    with pytest.raises(ConnectionError):
        await harness.run_all(PayoutContext(payout_id="failed", fail=True), saga_id=failed)
    async for _ in harness.mediator.stream(PayoutContext(payout_id="paused"), saga_id=paused):
        break

    assert await storage.get_sagas_for_recovery(limit=10) == []
    await advance(storage, LEASE + 1)
    assert await storage.get_sagas_for_recovery(limit=10) == [paused]
    assert await storage.get_sagas_for_recovery(limit=10, saga_name="PayoutSaga") == [paused]
    assert await storage.get_sagas_for_recovery(limit=10, saga_name="nope") == []
    assert await storage.get_sagas_for_recovery(limit=0) == []


async def test_get_sagas_for_recovery_skips_sagas_past_max_recovery_attempts(storage: EngineStorage) -> None:
    harness = make_harness((PayoutContext, PayoutSaga), storage=storage, lease_seconds=LEASE)
    saga_id = uuid.uuid4()
    async for _ in harness.mediator.stream(PayoutContext(payout_id="tired"), saga_id=saga_id):
        break
    await advance(storage, LEASE + 1)

    await storage.set_recovery_attempts(saga_id, 5)
    assert await storage.get_sagas_for_recovery(limit=10, max_recovery_attempts=5) == []
    assert await storage.get_sagas_for_recovery(limit=10, max_recovery_attempts=6) == [saga_id]


async def test_recover_saga_accepts_a_plain_di_container_and_finishes_a_paused_saga(storage: EngineStorage) -> None:
    harness = make_harness((PayoutContext, PayoutSaga), storage=storage, lease_seconds=LEASE)
    saga_id = uuid.uuid4()
    async for _ in harness.mediator.stream(PayoutContext(payout_id="p3"), saga_id=saga_id):
        break
    await advance(storage, LEASE + 1)
    (found,) = await storage.get_sagas_for_recovery(limit=10)

    await recover_saga(PayoutSaga(), found, PayoutContext, di.Container(), storage, lease_seconds=LEASE)

    assert LEDGER == ["approve:p3", "pay:p3"]
    assert (await storage.load_saga_state(saga_id))[0] == SagaStatus.COMPLETED
    assert await storage.get_sagas_for_recovery(limit=10) == []


async def test_bootstrap_accepts_a_plain_di_container(storage: EngineStorage) -> None:
    harness = make_harness((PayoutContext, OtherPayoutSaga), storage=storage, container=di.Container())
    saga_id = uuid.uuid4()

    results = await harness.run_all(PayoutContext(payout_id="p4"), saga_id=saga_id)

    assert results[-1].response == Paid(payout_id="p4")
    record = await harness.storage.get_saga(saga_id)
    assert record is not None
    assert record.name == "other-payout"
    assert record.status == SagaStatus.COMPLETED


async def test_the_python_cqrs_shaped_write_api_round_trips(storage: EngineStorage) -> None:
    saga_id = uuid.uuid4()

    await storage.create_saga(saga_id, "PayoutSaga", {"payout_id": "p5", "fail": False, "paid": False})
    status, context, version = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.PENDING
    await storage.update_status(saga_id, SagaStatus.RUNNING)
    await storage.log_step(saga_id, "approve", "act", SagaStepStatus.COMPLETED, "by hand")
    await storage.update_context(saga_id, {"payout_id": "p5", "fail": False, "paid": True}, current_version=version + 1)

    status, context, new_version = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.RUNNING
    assert context["paid"] is True
    assert new_version == version + 2
    (entry,) = await storage.get_step_history(saga_id)
    assert (entry.step_name, entry.action, entry.status, entry.details) == ("approve", "act", "completed", "by hand")
    with pytest.raises(RuntimeError):
        await storage.update_context(saga_id, {}, current_version=version)
