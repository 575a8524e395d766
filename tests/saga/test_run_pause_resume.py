"""Requirement 6: breaking out of a stream pauses the saga; streaming its id again continues it."""

from __future__ import annotations

import contextlib
import dataclasses
import typing
import uuid

import pytest

from cqrs.response import Response
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from saga.helpers import EngineStorage, make_harness

ACTS: list[str] = []
SEEN: list[dict[str, typing.Any]] = []
CONTEXTS: list[object] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    ACTS.clear()
    SEEN.clear()
    CONTEXTS.clear()


@dataclasses.dataclass
class WizardContext(SagaContext):
    user: str
    points: int = 0
    steps_done: list[str] = dataclasses.field(default_factory=list)


class Counted(Response):
    step: str
    points: int


class _Counting(SagaStepHandler[WizardContext, Counted]):
    async def act(self, context: WizardContext) -> SagaStepResult[WizardContext, Counted]:
        ACTS.append(self.name)
        CONTEXTS.append(context)
        SEEN.append({"step": self.name, "user": context.user, "points": context.points,
                     "steps_done": list(context.steps_done)})
        context.points += 10
        context.steps_done.append(self.name)
        return self._generate_step_result(Counted(step=self.name, points=context.points))


class StepOne(_Counting):
    pass


class StepTwo(_Counting):
    pass


class StepThree(_Counting):
    pass


class WizardSaga(Saga[WizardContext]):
    steps = [StepOne, StepTwo, StepThree]


async def test_breaking_after_the_first_step_leaves_the_saga_running(storage: EngineStorage) -> None:
    harness = make_harness((WizardContext, WizardSaga), storage=storage)
    saga_id = uuid.uuid4()

    async for result in harness.mediator.stream(WizardContext(user="ann"), saga_id=saga_id):
        assert result.step_type is StepOne
        break

    status, stored, _ = await harness.storage.load_saga_state(saga_id)
    assert status == SagaStatus.RUNNING
    assert stored == {"user": "ann", "points": 10, "steps_done": ["StepOne"]}
    assert ACTS == ["StepOne"]
    assert await harness.history(saga_id) == [("StepOne", "act", "completed")]


async def test_streaming_again_continues_from_step_two_with_the_stored_context(storage: EngineStorage) -> None:
    harness = make_harness((WizardContext, WizardSaga), storage=storage)
    saga_id = uuid.uuid4()

    async for _ in harness.mediator.stream(WizardContext(user="ann"), saga_id=saga_id):
        break
    other_callers_context = WizardContext(user="mallory", points=999, steps_done=["forged"])
    results = [r async for r in harness.mediator.stream(other_callers_context, saga_id=saga_id)]

    assert [(r.step_type, r.replayed) for r in results] == [
        (StepOne, True),
        (StepTwo, False),
        (StepThree, False),
    ]
    assert all(r.saga_id == saga_id for r in results)
    assert [r.response for r in results] == [
        Counted(step="StepOne", points=10),
        Counted(step="StepTwo", points=20),
        Counted(step="StepThree", points=30),
    ]
    # Each step acted exactly once overall, and step two saw what step one stored.
    assert ACTS == ["StepOne", "StepTwo", "StepThree"]
    assert SEEN[1] == {"step": "StepTwo", "user": "ann", "points": 10, "steps_done": ["StepOne"]}
    status, stored, _ = await harness.storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPLETED
    assert stored == {"user": "ann", "points": 30, "steps_done": ["StepOne", "StepTwo", "StepThree"]}
    assert await harness.history(saga_id) == [
        ("StepOne", "act", "completed"),
        ("StepTwo", "act", "completed"),
        ("StepThree", "act", "completed"),
    ]


async def test_pausing_twice_replays_every_earlier_step_each_time(storage: EngineStorage) -> None:
    harness = make_harness((WizardContext, WizardSaga), storage=storage)
    saga_id = uuid.uuid4()

    async for _ in harness.mediator.stream(WizardContext(user="bob"), saga_id=saga_id):
        break
    second_pass = []
    async for result in harness.mediator.stream(WizardContext(user="x"), saga_id=saga_id):
        second_pass.append((result.step_type, result.replayed))
        if not result.replayed:
            break
    third_pass = [(r.step_type, r.replayed) async for r in harness.mediator.stream(WizardContext("y"), saga_id=saga_id)]

    assert second_pass == [(StepOne, True), (StepTwo, False)]
    assert third_pass == [(StepOne, True), (StepTwo, True), (StepThree, False)]
    assert ACTS == ["StepOne", "StepTwo", "StepThree"]
    assert SEEN[2]["user"] == "bob"
    assert SEEN[2]["points"] == 20


async def test_closing_the_stream_explicitly_also_pauses(storage: EngineStorage) -> None:
    harness = make_harness((WizardContext, WizardSaga), storage=storage)
    saga_id = uuid.uuid4()

    stream = harness.mediator.stream(WizardContext(user="cy"), saga_id=saga_id)
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for _ in stream:
            break

    assert await harness.status(saga_id) == SagaStatus.RUNNING
    results = [r async for r in harness.mediator.stream(WizardContext(user="zz"), saga_id=saga_id)]
    assert [r.replayed for r in results] == [True, False, False]
    assert ACTS == ["StepOne", "StepTwo", "StepThree"]
    assert SEEN[1]["user"] == "cy"


async def test_the_resuming_callers_context_object_is_not_used_by_the_steps(storage: EngineStorage) -> None:
    harness = make_harness((WizardContext, WizardSaga), storage=storage)
    saga_id = uuid.uuid4()

    async for _ in harness.mediator.stream(WizardContext(user="dee"), saga_id=saga_id):
        break
    new_context = WizardContext(user="eve", points=5)
    async for _ in harness.mediator.stream(new_context, saga_id=saga_id):
        pass

    assert [seen["user"] for seen in SEEN] == ["dee", "dee", "dee"]
    assert [seen["points"] for seen in SEEN] == [0, 10, 20]


# -- a saga bound to a subclass of its declared context ---------------------------------------


@dataclasses.dataclass
class PremiumWizardContext(WizardContext):
    tier: str = "basic"


class PremiumWizardSaga(Saga[WizardContext]):
    steps = [StepOne, StepTwo, StepThree]


async def test_a_saga_bound_to_a_context_subclass_resumes_with_that_subclass(storage: EngineStorage) -> None:
    harness = make_harness((PremiumWizardContext, PremiumWizardSaga), storage=storage)
    saga_id = uuid.uuid4()

    async for _ in harness.mediator.stream(PremiumWizardContext(user="gus", tier="gold"), saga_id=saga_id):
        break
    async for _ in harness.mediator.stream(PremiumWizardContext(user="x"), saga_id=saga_id):
        pass

    assert ACTS == ["StepOne", "StepTwo", "StepThree"]
    types_seen = [type(ctx) for ctx in CONTEXTS]
    assert types_seen == [PremiumWizardContext] * 3
    _, stored, _ = await harness.storage.load_saga_state(saga_id)
    assert stored["tier"] == "gold"
