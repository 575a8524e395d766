"""The pytest plugin as a user meets it: a test file using its fixtures passes; a wrong expectation fails readably."""

from __future__ import annotations

import pathlib

import pytest
import tomllib

from conftest import PLUGIN_ARGS

pytest_plugins = ["pytester"]

SAGA = '''
import dataclasses

import cqrs
from cqrs.saga.retry import RetryPolicy
from cqrs.triggers import trigger


@dataclasses.dataclass
class Order(cqrs.SagaContext):
    order_id: str
    decline: bool = False


class Declined(Exception):
    pass


class Ok(cqrs.Response):
    pass


class Reserve(cqrs.SagaStepHandler[Order, Ok]):
    async def act(self, context):
        return self._generate_step_result(Ok())

    async def compensate(self, context):
        pass


class Charge(cqrs.SagaStepHandler[Order, Ok]):
    async def act(self, context):
        if context.decline:
            raise Declined("card declined")
        return self._generate_step_result(Ok())

    async def compensate(self, context):
        pass


class OrderSaga(cqrs.Saga[Order]):
    steps = [Reserve, Charge]

    @trigger(source="orders", idempotency_key="id")
    def from_event(self, event):
        return Order(order_id=event["id"])
'''

USER_TESTS = SAGA + '''

async def test_completes(saga_harness):
    harness = saga_harness(OrderSaga)
    outcome = await harness.run(Order("1"))
    await harness.assert_saga(outcome.saga_id, status="completed", steps=["Reserve", "Charge"])


async def test_declined_is_compensated(saga_harness):
    harness = saga_harness(OrderSaga, compensation_retry=RetryPolicy(attempts=1))
    outcome = await harness.run(Order("2", decline=True))
    await harness.assert_saga(outcome.saga_id, status="failed", steps=["Reserve"], compensated=["Reserve"])


async def test_crash_before_commit_then_recover_on_sqlite(sqlite_saga_harness):
    harness = sqlite_saga_harness(OrderSaga)
    harness.crash_before_commit(2)
    outcome = await harness.run(Order("3"))
    assert outcome.status == "running"
    assert await harness.recover() == 1
    await harness.assert_saga(outcome.saga_id, status="completed", steps=["Reserve", "Charge", "Charge"])


async def test_lost_lease_and_duplicate_delivery(saga_harness, saga_clock):
    harness = saga_harness(OrderSaga)
    harness.lose_lease("Charge")
    outcome = await harness.run(Order("4"))
    assert harness.recording(outcome.saga_id).lease_losses == 1
    await harness.recover()
    await harness.assert_saga(outcome.saga_id, status="completed")
    first, second = await harness.deliver("orders", {"id": "5"})
    assert (first.status, second.status) == ("accepted", "duplicate")
'''

WRONG = SAGA + '''

async def test_expects_the_wrong_outcome(saga_harness):
    harness = saga_harness(OrderSaga, compensation_retry=RetryPolicy(attempts=1))
    outcome = await harness.run(Order("6", decline=True))
    await harness.assert_saga(outcome.saga_id, status="completed", steps=["Reserve", "Charge"])
'''

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""


def test_a_users_test_file_using_the_fixtures_passes(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_orders=USER_TESTS)
    result = pytester.runpytest(*PLUGIN_ARGS)
    result.assert_outcomes(passed=4)


def test_a_wrong_expectation_fails_with_a_readable_message(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_wrong=WRONG)
    result = pytester.runpytest(*PLUGIN_ARGS)
    result.assert_outcomes(failed=1)
    result.stdout.no_fnmatch_line("*problems = check_saga(*")  # the harness's own code is not shown
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: Saga * (OrderSaga) did not go as expected (error: Declined: card declined):",
            "*status: expected 'completed', got 'failed'",
            "*steps run: expected ?'Reserve', 'Charge'?, got ?'Reserve'?",  # ? for a bracket (fnmatch)
            "*what ran:",
            "*act Reserve (attempt 1): ok",
            "*act Charge (attempt 1): Declined: card declined",
            "*compensate Reserve (attempt 1): ok",
        ]
    )


def test_the_plugin_is_registered_through_the_pytest11_entry_point() -> None:
    project = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["pytest11"] == {"cqrs": "cqrs.testing.plugin"}
    assert "pytest-asyncio>=0.23" in project["project"]["optional-dependencies"]["testing"]
