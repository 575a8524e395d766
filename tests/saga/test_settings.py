"""`EngineSettings`: what it accepts, and that a mediator's settings reach every run it builds."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import math
import uuid

import di
import pytest

from cqrs.response import Response
from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.map import SagaMap
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.models import SagaContext
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.settings import DEFAULT_COMPENSATION_RETRY, EngineSettings
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage, FakeSleep

UNDONE: list[str] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    UNDONE.clear()


@dataclasses.dataclass
class LoanContext(SagaContext):
    loan_id: str = "l1"


class Grant(SagaStepHandler[LoanContext, Response]):
    async def act(self, context: LoanContext) -> SagaStepResult[LoanContext, Response]:
        return self._generate_step_result(Response())

    async def compensate(self, context: LoanContext) -> None:
        UNDONE.append("Grant")
        raise ConnectionError("ledger down")


class Disburse(SagaStepHandler[LoanContext, Response]):
    async def act(self, context: LoanContext) -> SagaStepResult[LoanContext, Response]:
        raise RuntimeError("no funds")


class LoanSaga(Saga[LoanContext]):
    steps = [Grant, Disburse]


def _saga_map() -> SagaMap:
    saga_map = SagaMap()
    saga_map.bind(LoanContext, LoanSaga)
    return saga_map


def test_the_defaults() -> None:
    settings = EngineSettings()

    assert settings.compensation_retry == DEFAULT_COMPENSATION_RETRY == RetryPolicy(attempts=3, delay=1.0, backoff=2.0)
    assert settings.lease_seconds == 30.0
    assert settings.sleep is asyncio.sleep


def test_settings_are_frozen() -> None:
    settings = EngineSettings()

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lease_seconds = 5.0  # type: ignore[misc]
    assert dataclasses.replace(settings, lease_seconds=5.0).lease_seconds == 5.0


@pytest.mark.parametrize("lease_seconds", [-1.0, -0.001, math.nan])
def test_a_lease_that_is_negative_or_not_a_number_is_refused(lease_seconds: float) -> None:
    with pytest.raises(ValueError, match="lease_seconds must be zero or more") as caught:
        EngineSettings(lease_seconds=lease_seconds)
    assert str(lease_seconds) in str(caught.value)
    with pytest.raises(ValueError, match="lease_seconds"):
        dataclasses.replace(EngineSettings(), lease_seconds=lease_seconds)


def test_bootstrap_checks_the_lease_through_the_settings() -> None:
    with pytest.raises(ValueError, match="lease_seconds must be zero or more"):
        bootstrap(di.Container(), sagas_mapper=_saga_map(), lease_seconds=-5)


def test_a_zero_lease_is_accepted() -> None:
    assert EngineSettings(lease_seconds=0).lease_seconds == 0


def test_without_settings_a_mediator_makes_them_from_python_cqrs_compensation_numbers() -> None:
    mediator = SagaMediator(
        _saga_map(), di.Container(),
        compensation_retry_count=5, compensation_retry_delay=0.25, compensation_retry_backoff=3.0,
    )

    assert mediator.settings == EngineSettings(compensation_retry=RetryPolicy(attempts=5, delay=0.25, backoff=3.0))


async def test_given_settings_replace_the_compensation_numbers_in_every_run(storage: EngineStorage) -> None:
    sleep = FakeSleep()
    settings = EngineSettings(compensation_retry=RetryPolicy(attempts=2, delay=0.3), lease_seconds=45.0, sleep=sleep)
    mediator = SagaMediator(
        _saga_map(), di.Container(), storage=storage, compensation_retry_count=9, settings=settings
    )

    assert mediator.build_run(LoanSaga, uuid.uuid4()).settings is settings
    assert mediator.recovery_worker().settings is settings
    outcome = await mediator.run(LoanContext())

    assert outcome.status == SagaStatus.COMPENSATION_FAILED
    assert UNDONE == ["Grant", "Grant"]
    assert sleep.delays == [0.3]


async def test_the_lease_a_run_takes_is_the_settings_lease(storage: EngineStorage) -> None:
    mediator = SagaMediator(
        _saga_map(), di.Container(), storage=storage, settings=EngineSettings(lease_seconds=45.0)
    )

    saga_id = await mediator.start(LoanContext())

    record = await storage.get_saga(saga_id)
    assert record is not None and record.lease_expires_at is not None and record.updated_at is not None
    leased_for = record.lease_expires_at - record.updated_at
    assert abs(leased_for - datetime.timedelta(seconds=45)) < datetime.timedelta(seconds=1)
