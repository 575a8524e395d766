"""Lifecycle log records: one per event, with the saga's fields as structured ``extra``."""

from __future__ import annotations

import json
import logging
import typing

import di
import pytest

import cqrs
from cqrs import correlation
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.settings import EngineSettings
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.telemetry.logs import LOGGER_NAMES, LeaseLossLogHook, LogHook
from cqrs.testing import FakeClock
from log_capture import capturing
from shop_saga import ShopContext, ShopSaga

FIELDS = ("saga_id", "saga_name", "correlation_id", "step", "saga_event")


def mediator(storage: typing.Any = None) -> cqrs.SagaMediator:
    saga_map = cqrs.SagaMap()
    saga_map.register(ShopSaga)
    return cqrs.SagaMediator(
        saga_map, di.Container(), storage=storage or MemorySagaStorage(),
        settings=EngineSettings(compensation_retry=RetryPolicy(attempts=1)),
    )


def lifecycle(records: list[logging.LogRecord]) -> list[tuple[str | None, str | None]]:
    return [(getattr(r, "saga_event", None), getattr(r, "step", None)) for r in records if r.levelno == logging.INFO]


async def test_each_lifecycle_event_of_a_completed_saga_is_an_info_record_with_its_fields() -> None:
    with capturing("cqrs.saga") as logged:
        outcome = await mediator().run(ShopContext("o-1"), correlation_id="corr-1")
    assert lifecycle(logged.records) == [
        ("started", None),
        ("step_completed", "reserve"),
        ("step_completed", "charge"),
        ("step_completed", "ship"),
        ("completed", None),
    ]
    for record in logged.records:
        assert record.name == "cqrs.saga"
        assert (record.saga_id, record.saga_name, record.correlation_id) == (str(outcome.saga_id), "ShopSaga", "corr-1")  # type: ignore[attr-defined]
    assert logged.records[-1].status == "completed"  # type: ignore[attr-defined]
    assert logged.records[1].getMessage() == f"Saga {outcome.saga_id}: step reserve completed"


async def test_a_failed_saga_logs_the_failure_and_each_compensation() -> None:
    with capturing("cqrs.saga") as logged:
        outcome = await mediator().run(ShopContext("o-2", fail_at="ship", stuck="reserve"))
    assert lifecycle(logged.records) == [
        ("started", None),
        ("step_completed", "reserve"),
        ("step_completed", "charge"),
        ("step_failed", "ship"),
        ("compensating", None),
        ("step_compensated", "charge"),
        ("compensation_failed", "reserve"),
        ("failed", None),
    ]
    info = [r for r in logged.records if r.levelno == logging.INFO]
    assert info[3].error == "Declined: ship declined order o-2"  # type: ignore[attr-defined]
    assert info[6].error == "Stuck: cannot undo reserve"  # type: ignore[attr-defined]
    assert info[-1].status == "compensation_failed"  # type: ignore[attr-defined]
    assert all(r.saga_id == str(outcome.saga_id) for r in info)  # type: ignore[attr-defined]


async def test_a_json_formatter_carries_the_fields() -> None:
    """The fields are record attributes: a formatter that dumps them needs no parsing."""

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps({"message": record.getMessage(), **{f: getattr(record, f, None) for f in FIELDS}})

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(correlation.CorrelationIdFilter())  # keeps the fields the records carry
    saga_logger = logging.getLogger("cqrs.saga")
    saga_logger.addHandler(handler)
    saga_logger.setLevel(logging.INFO)
    try:
        outcome = await mediator().run(ShopContext("o-3"), correlation_id="corr-3")
    finally:
        saga_logger.removeHandler(handler)
        saga_logger.setLevel(logging.NOTSET)
    first = json.loads(lines[0])
    assert first == {
        "message": f"Saga {outcome.saga_id} (ShopSaga) started",
        "saga_id": str(outcome.saga_id),
        "saga_name": "ShopSaga",
        "correlation_id": "corr-3",
        "step": None,
        "saga_event": "started",
    }
    assert json.loads(lines[1])["step"] == "reserve"


async def test_recovery_claims_resumes_and_lease_losses_are_logged() -> None:
    clock = FakeClock()
    storage = MemorySagaStorage(clock=clock)
    runner = mediator(storage)
    saga_id = await runner.start(ShopContext("o-4"), correlation_id="corr-4")
    clock.advance(31)
    with capturing("cqrs.recovery") as recovery, capturing("cqrs.saga") as saga:
        assert await runner.recovery_worker().run_once() == 1
    (claim,) = recovery.records
    assert claim.levelno == logging.INFO
    assert claim.getMessage() == f"Saga {saga_id} (ShopSaga) claimed for recovery: running, attempt 1"
    assert (claim.saga_id, claim.saga_name, claim.correlation_id, claim.recovery_attempt) == (  # type: ignore[attr-defined]
        str(saga_id), "ShopSaga", "corr-4", 1,
    )
    assert lifecycle(saga.records)[0] == ("resumed", None)

    hook = LeaseLossLogHook()
    with capturing("cqrs.saga") as lost:
        run = runner.build_run(ShopSaga, saga_id)
        hook.lease_lost(run)
    (record,) = lost.records
    assert (record.levelno, record.saga_event) == (logging.WARNING, "lease_lost")  # type: ignore[attr-defined]


async def test_with_info_off_no_record_is_made() -> None:
    """The default: Python's root logger at WARNING; the hook checks the level and makes nothing."""
    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: typing.Any, **kwargs: typing.Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        made.append(record)
        return record

    assert not logging.getLogger("cqrs.saga").isEnabledFor(logging.INFO)
    logging.setLogRecordFactory(counting)
    try:
        await mediator().run(ShopContext("o-5"))
    finally:
        logging.setLogRecordFactory(factory)
    assert made == []


def test_the_logger_tree_is_documented() -> None:
    assert set(LOGGER_NAMES) == {
        "cqrs.saga", "cqrs.saga.storage", "cqrs.recovery", "cqrs.events", "cqrs.integrations", "cqrs.telemetry",
    }


@pytest.mark.parametrize("telemetry", [True, False])
def test_telemetry_false_leaves_the_logging_hook_out(telemetry: bool) -> None:
    saga_map = cqrs.SagaMap()
    mediator = cqrs.SagaMediator(saga_map, di.Container(), telemetry=telemetry)
    assert any(isinstance(h, LogHook) for h in mediator.hooks) is telemetry
