"""Requirement 15: correlation ids are stored, visible to step code and added to log records."""

from __future__ import annotations

import dataclasses
import logging
import typing
import uuid

import di
import pytest

from cqrs import correlation
from cqrs.response import Response
from cqrs.saga.models import SagaContext
from cqrs.saga.recovery import recover_saga
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from saga.helpers import EngineStorage, advance, make_harness

step_logger = logging.getLogger("tests.engine.correlation.steps")
SEEN: list[tuple[str, str | None, uuid.UUID | None]] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log_records() -> typing.Iterator[list[logging.LogRecord]]:
    """Records the step logger emits, through a handler with `CorrelationIdFilter` attached."""
    handler = ListHandler()
    handler.addFilter(correlation.CorrelationIdFilter())
    step_logger.addHandler(handler)
    previous_level = step_logger.level
    step_logger.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        step_logger.removeHandler(handler)
        step_logger.setLevel(previous_level)


@dataclasses.dataclass
class ReportContext(SagaContext):
    report_id: str
    fail: bool = False


class GatherStep(SagaStepHandler[ReportContext, Response]):
    async def act(self, context: ReportContext) -> SagaStepResult[ReportContext, Response]:
        SEEN.append(("act:gather", correlation.get_correlation_id(), correlation.get_saga_id()))
        step_logger.info("gathering %s", context.report_id)
        return self._generate_step_result(Response())

    async def compensate(self, context: ReportContext) -> None:
        SEEN.append(("compensate:gather", correlation.get_correlation_id(), correlation.get_saga_id()))
        step_logger.info("ungathering %s", context.report_id)


class RenderStep(SagaStepHandler[ReportContext, Response]):
    async def act(self, context: ReportContext) -> SagaStepResult[ReportContext, Response]:
        SEEN.append(("act:render", correlation.get_correlation_id(), correlation.get_saga_id()))
        if context.fail:
            raise RuntimeError("render failed")
        return self._generate_step_result(Response())


class ReportSaga(Saga[ReportContext]):
    steps = [GatherStep, RenderStep]


async def test_the_correlation_id_is_stored_on_the_saga_record(storage: EngineStorage) -> None:
    harness = make_harness((ReportContext, ReportSaga), storage=storage)
    saga_id = uuid.uuid4()

    await harness.run_all(ReportContext(report_id="r1"), saga_id=saga_id, correlation_id="abc")

    record = await harness.storage.get_saga(saga_id)
    assert record is not None
    assert record.correlation_id == "abc"
    assert [r.saga_id for r in await harness.storage.list_sagas(correlation_id="abc")] == [saga_id]


async def test_step_code_sees_the_correlation_id_and_the_caller_keeps_its_own(storage: EngineStorage) -> None:
    harness = make_harness((ReportContext, ReportSaga), storage=storage)
    saga_id = uuid.uuid4()

    await harness.run_all(ReportContext(report_id="r2"), saga_id=saga_id, correlation_id="abc")

    assert [("act:gather", "abc", saga_id), ("act:render", "abc", saga_id)] == SEEN
    assert correlation.get_correlation_id() is None
    assert correlation.get_saga_id() is None


async def test_compensations_see_the_correlation_id_too(storage: EngineStorage) -> None:
    harness = make_harness((ReportContext, ReportSaga), storage=storage)
    saga_id = uuid.uuid4()

    with pytest.raises(RuntimeError):
        await harness.run_all(ReportContext(report_id="r3", fail=True), saga_id=saga_id, correlation_id="abc")

    assert ("compensate:gather", "abc", saga_id) in SEEN


async def test_log_records_emitted_inside_act_carry_the_correlation_id(
    log_records: list[logging.LogRecord],
    storage: EngineStorage,
) -> None:
    harness = make_harness((ReportContext, ReportSaga), storage=storage)
    saga_id = uuid.uuid4()

    await harness.run_all(ReportContext(report_id="r4"), saga_id=saga_id, correlation_id="abc")
    step_logger.info("outside the saga")

    inside, outside = log_records
    assert inside.getMessage() == "gathering r4"
    assert inside.correlation_id == "abc"  # type: ignore[attr-defined]
    assert inside.saga_id == str(saga_id)  # type: ignore[attr-defined]
    assert outside.correlation_id == "-"  # type: ignore[attr-defined]
    assert outside.saga_id == "-"  # type: ignore[attr-defined]


async def test_log_records_can_be_formatted_with_the_correlation_id(
    log_records: list[logging.LogRecord],
    storage: EngineStorage,
) -> None:
    harness = make_harness((ReportContext, ReportSaga), storage=storage)

    await harness.run_all(ReportContext(report_id="r5"), correlation_id="req-42")

    formatter = logging.Formatter("[%(correlation_id)s] %(message)s")
    assert [formatter.format(r) for r in log_records] == ["[req-42] gathering r5"]


async def test_the_ambient_correlation_id_is_used_when_none_is_passed(storage: EngineStorage) -> None:
    harness = make_harness((ReportContext, ReportSaga), storage=storage)
    saga_id = uuid.uuid4()

    token = correlation.set_correlation_id("from-request")
    try:
        await harness.run_all(ReportContext(report_id="r6"), saga_id=saga_id)
    finally:
        correlation.reset_correlation_id(token)

    record = await harness.storage.get_saga(saga_id)
    assert record is not None
    assert record.correlation_id == "from-request"
    assert {cid for _, cid, _ in SEEN} == {"from-request"}


async def test_a_resumed_saga_keeps_its_stored_correlation_id(storage: EngineStorage) -> None:
    harness = make_harness((ReportContext, ReportSaga), storage=storage)
    saga_id = uuid.uuid4()

    async for _ in harness.mediator.stream(ReportContext(report_id="r7"), saga_id=saga_id, correlation_id="abc"):
        break
    await harness.run_all(ReportContext(report_id="r7"), saga_id=saga_id)

    assert [("act:gather", "abc", saga_id), ("act:render", "abc", saga_id)] == SEEN


async def test_a_saga_resumed_by_a_stream_keeps_its_stored_correlation_id_under_another_ambient_one(
    storage: EngineStorage,
) -> None:
    harness = make_harness((ReportContext, ReportSaga), storage=storage)
    saga_id = uuid.uuid4()
    async for _ in harness.mediator.stream(ReportContext(report_id="r9"), saga_id=saga_id, correlation_id="abc"):
        break

    token = correlation.set_correlation_id("the-resuming-request")
    try:
        await harness.run_all(ReportContext(report_id="r9"), saga_id=saga_id)
    finally:
        correlation.reset_correlation_id(token)

    record = await harness.storage.get_saga(saga_id)
    assert record is not None and record.correlation_id == "abc"
    assert [("act:gather", "abc", saga_id), ("act:render", "abc", saga_id)] == SEEN


async def test_a_recovered_saga_runs_its_steps_under_its_stored_correlation_id(storage: EngineStorage) -> None:
    harness = make_harness((ReportContext, ReportSaga), storage=storage, lease_seconds=10)
    saga_id = uuid.uuid4()
    async for _ in harness.mediator.stream(ReportContext(report_id="r8"), saga_id=saga_id, correlation_id="abc"):
        break
    await advance(storage, 11)

    await recover_saga(ReportSaga, saga_id, ReportContext, di.Container(), storage, lease_seconds=10)

    assert SEEN[-1] == ("act:render", "abc", saga_id)
