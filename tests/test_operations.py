"""Operator actions (cqrs.saga.operations) over memory, SQLite and PostgreSQL: what they do, what they record in
the history, and every refusal (engine rules, definitions, live runners)."""

from __future__ import annotations

import typing
import uuid

import di
import pytest
from tests import ops_sagas
from tests.ops_sagas import AuditContext, ShopContext

from cqrs.config import open_storage
from cqrs.saga._ownership import process_owner
from cqrs.saga.exceptions import SagaNotFoundError
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.operations import OPERATOR_STEP, OperationRefusedError, SagaLeasedError, SagaOperations
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.protocol import SagaStorage

pytestmark = pytest.mark.parametrize(
    "storage_url", ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture(autouse=True)
def _clean_switches() -> typing.Iterator[None]:
    ops_sagas.BROKEN.clear()
    ops_sagas.BROKEN_COMPENSATIONS.clear()
    ops_sagas.CALLS.clear()
    yield
    ops_sagas.BROKEN.clear()
    ops_sagas.BROKEN_COMPENSATIONS.clear()


@pytest.fixture
async def storage(storage_url: str) -> typing.AsyncIterator[SagaStorage]:
    opened = await open_storage(storage_url)
    yield opened
    await opened.close()


@pytest.fixture
def mediator(storage: SagaStorage) -> SagaMediator:
    return SagaMediator(ops_sagas.saga_map, di.Container(), storage=storage)


@pytest.fixture
def ops(mediator: SagaMediator) -> SagaOperations:
    return SagaOperations(mediator=mediator, actor="alice")


def steps(history: typing.Sequence[typing.Any]) -> list[tuple[str, str, str]]:
    return [(e.step_name, e.action, e.status.value) for e in history]


async def compensation_failed(mediator: SagaMediator, *broken: str) -> uuid.UUID:
    """A ShopSaga whose ship failed and whose compensations of ``broken`` failed."""
    ops_sagas.BROKEN.add("ship")
    ops_sagas.BROKEN_COMPENSATIONS.update(broken)
    outcome = await mediator.run(ShopContext(order_id="o-1"))
    assert outcome.status == SagaStatus.COMPENSATION_FAILED
    ops_sagas.BROKEN.clear()
    ops_sagas.CALLS.clear()
    return outcome.saga_id


async def test_retry_runs_the_failed_compensations_again_and_records_it(
    mediator: SagaMediator, ops: SagaOperations
) -> None:
    saga_id = await compensation_failed(mediator, "reserve")
    ops_sagas.BROKEN_COMPENSATIONS.clear()  # the fix
    result = await ops.retry_compensations(saga_id, "payment service back")
    assert result.status == SagaStatus.FAILED and result.outcome is not None
    assert ops_sagas.CALLS == ["compensate reserve"]  # not charge, compensated before
    history = await mediator.storage.get_history(saga_id)
    assert history is not None
    assert steps(history)[-2:] == [(OPERATOR_STEP, "act", "started"), ("reserve", "compensate", "compensated")]
    assert history[-2].details == "retry by alice: payment service back"
    record = await mediator.storage.get_saga(saga_id)
    assert record is not None and record.recovery_attempts == 0


async def test_retry_without_the_definitions_hands_the_saga_to_the_workers(
    storage: SagaStorage, mediator: SagaMediator
) -> None:
    saga_id = await compensation_failed(mediator, "reserve")
    result = await SagaOperations(storage).retry_compensations(saga_id)
    assert result.status == SagaStatus.COMPENSATION_FAILED and result.outcome is None
    assert "recovery worker" in result.message
    assert ops_sagas.CALLS == []


async def test_resolve_marks_every_outstanding_compensation_done_by_hand(
    mediator: SagaMediator, ops: SagaOperations
) -> None:
    saga_id = await compensation_failed(mediator, "reserve", "charge")
    with pytest.raises(OperationRefusedError, match="a note is required"):
        await ops.resolve(saga_id, "  ")
    result = await ops.resolve(saga_id, "refunded in the PSP dashboard, ticket 42")
    assert result.status == SagaStatus.FAILED
    assert ops_sagas.CALLS == []  # nothing ran: the operator did it by hand
    history = await mediator.storage.get_history(saga_id)
    assert history is not None
    resolved = [e for e in history if e.details and "by hand" in e.details]
    assert [(e.step_name, e.action, e.status) for e in resolved] == [
        ("charge", "compensate", SagaStepStatus.COMPENSATED),
        ("reserve", "compensate", SagaStepStatus.COMPENSATED),
    ]
    assert resolved[0].details == "compensated by hand, resolved by alice: refunded in the PSP dashboard, ticket 42"
    record = await mediator.storage.get_saga(saga_id)
    assert record is not None and record.status == SagaStatus.FAILED and record.error == "StepFailed: ship is broken"
    with pytest.raises(OperationRefusedError, match="it is failed"):
        await ops.resolve(saga_id, "again")


async def test_skip_one_compensation_then_retry_the_rest(mediator: SagaMediator, ops: SagaOperations) -> None:
    saga_id = await compensation_failed(mediator, "reserve", "charge")
    for step, reason in [("ship", "never completed"), ("nope", "never completed")]:
        with pytest.raises(OperationRefusedError, match=reason):
            await ops.skip_compensation(saga_id, step, "x")
    with pytest.raises(OperationRefusedError, match="a note is required"):
        await ops.skip_compensation(saga_id, "reserve", "")
    result = await ops.skip_compensation(saga_id, "reserve", "nothing was reserved in the end")
    assert result.status == SagaStatus.COMPENSATION_FAILED and "still outstanding: charge" in result.message
    with pytest.raises(OperationRefusedError, match="compensated already"):
        await ops.skip_compensation(saga_id, "reserve", "twice")
    ops_sagas.BROKEN_COMPENSATIONS.clear()
    result = await ops.retry_compensations(saga_id)
    assert result.status == SagaStatus.FAILED
    assert ops_sagas.CALLS == ["compensate charge"]  # reserve's was skipped, not run


async def test_skipping_the_last_outstanding_compensation_ends_the_saga(
    mediator: SagaMediator, ops: SagaOperations
) -> None:
    saga_id = await compensation_failed(mediator, "reserve")
    result = await ops.skip_compensation(saga_id, "reserve", "nothing to undo")
    assert result.status == SagaStatus.FAILED and "last one outstanding" in result.message


async def test_rerun_a_saga_whose_first_step_failed_after_a_fix(mediator: SagaMediator, ops: SagaOperations) -> None:
    ops_sagas.BROKEN.add("reserve")
    outcome = await mediator.run(ShopContext(order_id="o-2"))
    assert outcome.status == SagaStatus.FAILED
    with pytest.raises(OperationRefusedError, match=r"would run from 'reserve'.*not from 'charge'"):
        await ops.rerun(outcome.saga_id, "charge")
    with pytest.raises(OperationRefusedError, match="has no step 'pack'"):
        await ops.rerun(outcome.saga_id, "pack")
    ops_sagas.BROKEN.clear()  # the fix
    ops_sagas.CALLS.clear()
    result = await ops.rerun(outcome.saga_id, "reserve", "inventory service fixed")
    assert result.status == SagaStatus.COMPLETED
    assert ops_sagas.CALLS == ["act reserve", "act charge", "act ship"]
    history = await mediator.storage.get_history(outcome.saga_id)
    assert history is not None
    assert steps(history)[:2] == [("reserve", "act", "failed"), (OPERATOR_STEP, "act", "started")]
    assert history[1].details == "rerun from step reserve by alice: inventory service fixed"
    record = await mediator.storage.get_saga(outcome.saga_id)
    assert record is not None and not record.error
    with pytest.raises(OperationRefusedError, match="it is completed; only a failed or parked saga"):
        await ops.rerun(outcome.saga_id, "reserve")


async def test_rerun_is_refused_once_compensation_started(mediator: SagaMediator, ops: SagaOperations) -> None:
    ops_sagas.BROKEN.add("ship")
    outcome = await mediator.run(ShopContext(order_id="o-3"))
    assert outcome.status == SagaStatus.FAILED  # charge and reserve compensated
    ops_sagas.BROKEN.clear()
    with pytest.raises(OperationRefusedError, match="once compensating a saga never runs forward again"):
        await ops.rerun(outcome.saga_id, "ship")


async def test_rerun_is_refused_when_the_definition_does_not_allow_it(
    mediator: SagaMediator, ops: SagaOperations
) -> None:
    ops_sagas.BROKEN.add("audit")
    outcome = await mediator.run(AuditContext(subject="s"))
    assert outcome.status == SagaStatus.FAILED
    with pytest.raises(OperationRefusedError, match="AuditSaga does not allow it: set `rerun_failed = True`"):
        await ops.rerun(outcome.saga_id, "audit")
    with pytest.raises(OperationRefusedError, match="needs the saga definitions"):
        await SagaOperations(mediator.storage).rerun(outcome.saga_id, "audit")


async def test_park_reset_and_recover_a_stopped_saga_never_racing_its_runner(
    mediator: SagaMediator, ops: SagaOperations
) -> None:
    saga_id = await mediator.start(ShopContext(order_id="o-4"))  # recorded, leased by this process
    with pytest.raises(SagaLeasedError, match=r"a runner \(.*\) holds its lease until"):
        await ops.park(saga_id, "investigating")
    claim = await mediator.storage.claim_saga(saga_id, process_owner(), 30)
    assert claim is not None and claim.lease is not None
    assert await mediator.storage.release_lease(saga_id, claim.lease)  # the runner went away
    assert (await ops.park(saga_id, "investigating")).status == SagaStatus.PARKED
    record = await mediator.storage.get_saga(saga_id)
    assert record is not None and record.error == "parked by alice: investigating"
    with pytest.raises(OperationRefusedError, match="it is parked already"):
        await ops.park(saga_id)
    with pytest.raises(OperationRefusedError, match=r"it is parked \(reset it first"):
        await ops.recover(saga_id)
    assert (await ops.reset(saga_id)).status == SagaStatus.RUNNING
    result = await ops.recover(saga_id)
    assert result.status == SagaStatus.COMPLETED
    with pytest.raises(OperationRefusedError, match="it is completed: there is nothing to resume"):
        await ops.reset(saga_id)


async def test_a_parked_running_saga_reruns_from_its_next_step(mediator: SagaMediator, ops: SagaOperations) -> None:
    ops_sagas.BROKEN.add("charge")
    saga_id = uuid.uuid4()
    stream = mediator.stream(ShopContext(order_id="o-5"), saga_id=saga_id)
    await stream.__anext__()  # reserve completed; the run stops here (paused, lease released on close)
    await stream.aclose()
    claim = await mediator.storage.claim_saga(saga_id, process_owner(), 30)
    assert claim is not None and claim.lease is not None
    assert await mediator.storage.release_lease(saga_id, claim.lease)
    await ops.park(saga_id, "charge keeps timing out")
    ops_sagas.BROKEN.clear()
    with pytest.raises(OperationRefusedError, match="completed already, and a completed step never runs again"):
        await ops.rerun(saga_id, "reserve")
    assert (await ops.rerun(saga_id, "charge")).status == SagaStatus.COMPLETED


async def test_allowed_names_each_action_with_its_refusal(mediator: SagaMediator, ops: SagaOperations) -> None:
    saga_id = await compensation_failed(mediator, "reserve")
    record, history = await ops.load(saga_id)
    allowed = ops.allowed(record, history)
    assert {name for name, reason in allowed.items() if reason is None} == {
        "park", "reset", "recover", "retry", "resolve", "skip",
    }
    assert allowed["rerun"] == "it is compensation_failed; only a failed or parked saga is re-run from a step " \
        "(recover runs a resumable one)"
    with pytest.raises(SagaNotFoundError):
        await ops.load(uuid.uuid4())
