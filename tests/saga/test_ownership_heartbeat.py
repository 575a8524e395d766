"""A run renews its lease while a step is running, and only then.

The runs use the `storage` fixture (memory, then SQLite) with its lease
renewals counted (`Renewals`); the ticker's own tests need no storage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import typing
import uuid
import weakref

import di
import pytest

import cqrs
from cqrs.response import Response
from cqrs.saga import bootstrap
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.models import Lease
from saga.helpers import EngineStorage

RENEWALS_WANTED = 3


class Renewals:
    """Counts the lease renewals of a storage and says when enough happened; ``refuse``: refuses every one
    (without asking the storage), as when another runner has taken the saga over."""

    def __init__(self, storage: EngineStorage, *, refuse: bool = False) -> None:
        self.renewals = 0
        self.attempts = 0
        self.enough = asyncio.Event()
        self.refused = asyncio.Event()
        renew = storage.renew_lease

        async def counted(saga_id: uuid.UUID, lease: Lease, lease_seconds: float) -> bool:
            self.attempts += 1
            if refuse:
                self.refused.set()
                return False
            renewed = await renew(saga_id, lease, lease_seconds)
            if renewed:  # only renewals that kept the lease count
                self.renewals += 1
                if self.renewals >= RENEWALS_WANTED:
                    self.enough.set()
            return renewed

        storage.renew_lease = counted  # type: ignore[method-assign]


RENEWALS: Renewals


@dataclasses.dataclass
class JobContext(SagaContext):
    job: str
    slow: bool = False


class Quick(SagaStepHandler[JobContext, Response]):
    async def act(self, context: JobContext) -> SagaStepResult[JobContext, Response]:
        return self._generate_step_result(Response())

    async def compensate(self, context: JobContext) -> None:
        return None


class Long(SagaStepHandler[JobContext, Response]):
    """Runs until the storage has seen several renewals (only the heartbeat makes them)."""

    async def act(self, context: JobContext) -> SagaStepResult[JobContext, Response]:
        if context.slow:
            await RENEWALS.enough.wait()
        return self._generate_step_result(Response())

    async def compensate(self, context: JobContext) -> None:
        return None


class JobSaga(Saga[JobContext]):
    steps = [Quick, Long]


def make_mediator(storage: EngineStorage, lease_seconds: float, *, refuse: bool = False) -> cqrs.SagaMediator:
    """A mediator on ``storage``, whose renewals `RENEWALS` counts from now on."""
    global RENEWALS
    RENEWALS = Renewals(storage, refuse=refuse)

    def saga_mapper(mapper: cqrs.SagaMap) -> None:
        mapper.bind(JobContext, JobSaga)

    return bootstrap.bootstrap(
        di_container=di.Container(), sagas_mapper=saga_mapper, saga_storage=storage, lease_seconds=lease_seconds
    )


async def test_a_long_step_keeps_its_lease_renewed(storage: EngineStorage) -> None:
    # The heartbeat fires every lease_seconds / 3 while the step waits for it.
    mediator = make_mediator(storage, lease_seconds=0.09)
    outcome = await asyncio.wait_for(mediator.run(JobContext(job="export", slow=True)), timeout=30)
    assert outcome.status == SagaStatus.COMPLETED
    assert RENEWALS.renewals >= RENEWALS_WANTED
    record = await storage.get_saga(outcome.saga_id)
    assert record is not None and record.owner is None  # released at the end


async def test_short_steps_renew_nothing(storage: EngineStorage) -> None:
    mediator = make_mediator(storage, lease_seconds=30)
    for index in range(20):
        outcome = await mediator.run(JobContext(job=f"job-{index}"))
        assert outcome.status == SagaStatus.COMPLETED
    # Each checkpoint extends the lease; a separate renewal would be a wasted write.
    assert RENEWALS.attempts == 0


async def test_runs_share_one_timer_and_leave_nothing_behind(storage: EngineStorage) -> None:
    """A long step is renewed while quick sagas come and go on the same loop; afterwards the loop's
    ticker holds no run and has stopped."""
    from cqrs.saga import _ownership as _engine

    mediator = make_mediator(storage, lease_seconds=0.09)
    slow = asyncio.create_task(mediator.run(JobContext(job="export", slow=True)))
    quick = 0
    while not slow.done():
        outcome = await mediator.run(JobContext(job=f"job-{quick}"))
        assert outcome.status == SagaStatus.COMPLETED
        quick += 1
        await asyncio.sleep(0)
    assert (await slow).status == SagaStatus.COMPLETED
    assert RENEWALS.renewals >= RENEWALS_WANTED and quick > 0

    ticker = _engine.tickers_of(asyncio.get_running_loop())[0.09]
    assert ticker.acting == {}
    stopped = asyncio.Event()
    # The next tick finds no run acting and does not re-arm the timer.
    asyncio.get_running_loop().call_later(ticker.interval * 1.5, stopped.set)
    await stopped.wait()
    assert ticker._handle is None


async def test_a_lost_lease_is_not_renewed_again(storage: EngineStorage) -> None:
    from cqrs.saga import _ownership as _engine
    from cqrs.saga.exceptions import SagaOwnershipLostError

    mediator = make_mediator(storage, lease_seconds=0.09, refuse=True)
    run = asyncio.create_task(mediator.run(JobContext(job="export", slow=True)))
    await RENEWALS.refused.wait()
    ticker = _engine.tickers_of(asyncio.get_running_loop())[0.09]
    later = asyncio.Event()
    # Several more ticks pass while the step still runs (timers fire in order of their time).
    asyncio.get_running_loop().call_later(ticker.interval * 6, later.set)
    await later.wait()
    assert RENEWALS.attempts == 1
    RENEWALS.enough.set()  # the step ends; its result is not recorded
    with pytest.raises(SagaOwnershipLostError):
        await run


def test_a_loop_without_weak_references_still_gets_its_tickers() -> None:
    """Some event loop types (compiled ones) may not support weak references; their tickers are kept."""
    from cqrs.saga import _ownership as _engine

    class Unreferenceable:
        __slots__ = ()

    loop = typing.cast(asyncio.AbstractEventLoop, Unreferenceable())
    with pytest.raises(TypeError):
        weakref.ref(loop)
    tickers = _engine.tickers_of(loop)
    assert _engine.tickers_of(loop) is tickers
    del _engine._pinned_tickers[loop]


async def test_an_action_is_renewed_on_its_second_tick_and_every_second_tick_after() -> None:
    """Ticks come every lease/6, so a renewal comes within lease/3 of the action's start and every lease/3 after
    (docs/recovery.md). Ticks are driven by hand here; the ticker's own timer is far off."""
    from cqrs.saga import _ownership as _engine

    class Recorder:
        renewals = 0

        def renew(self) -> bool:
            self.renewals += 1
            return True

    ticker = _engine._Ticker(interval=3600.0)
    action = Recorder()
    ticker.add(typing.cast(typing.Any, action))
    seen = []
    for _ in range(6):
        ticker._tick()
        seen.append(action.renewals)
    assert seen == [0, 1, 1, 2, 2, 3]
    ticker.acting.clear()
    ticker._tick()  # nothing acting: the timer is not re-armed
    assert ticker._handle is None


def test_a_forked_child_is_another_lease_owner() -> None:
    """The owner id is computed once per process; a fork makes the child compute its own."""
    import os

    from cqrs.saga._ownership import process_owner

    parent = process_owner()
    assert process_owner() == parent
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(writer, process_owner().encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    assert child != parent and f":{pid}:" in child
    assert process_owner() == parent
