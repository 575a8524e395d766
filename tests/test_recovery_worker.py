"""RecoveryWorker: claims interrupted sagas by name, finishes them, counts attempts, parks, stops on SIGTERM.

One suite over memory, SQLite and PostgreSQL storages. Sagas are interrupted
by cancelling the task that runs them while a step waits on an event, which
is what a shutdown does; leases are zero seconds long so they have lapsed by
the time the worker looks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import typing
import uuid

import di
import pytest

import cqrs
from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.models import SagaContext
from cqrs.saga.recovery import RecoveryWorker
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.saga.storage.models import NewSaga
from cqrs.saga.storage.protocol import SagaStorage
from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

LEDGER: list[str] = []
GATE: dict[str, asyncio.Event] = {}


@dataclasses.dataclass
class ParcelContext(SagaContext):
    parcel_id: str
    label: str | None = None


class Done(cqrs.Response):
    value: str


class Weigh(SagaStepHandler[ParcelContext, Done]):
    async def act(self, context: ParcelContext) -> SagaStepResult[ParcelContext, Done]:
        LEDGER.append(f"weigh:{context.parcel_id}")
        return self._generate_step_result(Done(value="weighed"))


class Label(SagaStepHandler[ParcelContext, Done]):
    async def act(self, context: ParcelContext) -> SagaStepResult[ParcelContext, Done]:
        LEDGER.append(f"label:{context.parcel_id}")
        gate = GATE.get(context.parcel_id)
        if gate is not None:
            await gate.wait()
        context.label = f"L-{context.parcel_id}"
        return self._generate_step_result(Done(value=context.label))


class Dispatch(SagaStepHandler[ParcelContext, Done]):
    async def act(self, context: ParcelContext) -> SagaStepResult[ParcelContext, Done]:
        LEDGER.append(f"dispatch:{context.parcel_id}:{context.label}")
        return self._generate_step_result(Done(value="sent"))


class ParcelSaga(Saga[ParcelContext]):
    steps = [Weigh, Label, Dispatch]


@pytest.fixture(autouse=True)
def _clean() -> None:
    LEDGER.clear()
    GATE.clear()



@pytest.fixture
async def storage(storage_url: str) -> typing.AsyncIterator[SagaStorage]:
    if storage_url == "memory://":
        store: SagaStorage = MemorySagaStorage()
    else:
        sql = SqlAlchemySagaStorage.from_url(storage_url)
        await sql.create_tables()
        store = sql
    yield store
    await store.close()


def mediator_for(storage: SagaStorage) -> SagaMediator:
    return bootstrap(
        di_container=di.Container(),
        sagas_mapper=lambda mapper: mapper.bind(ParcelContext, ParcelSaga),
        saga_storage=storage,
        lease_seconds=0.0,
    )


def worker_for(storage: SagaStorage, **options: typing.Any) -> RecoveryWorker:
    return RecoveryWorker([ParcelSaga], di.Container(), storage, poll_interval=0.01, **options)


async def interrupt_in_label(storage: SagaStorage, parcel_id: str) -> uuid.UUID:
    """Start a saga and cancel its run while `Label` is in flight (as a shutdown would)."""
    saga_id = uuid.uuid4()
    gate = GATE[parcel_id] = asyncio.Event()
    mediator = mediator_for(storage)

    async def run() -> None:
        async for _ in mediator.stream(ParcelContext(parcel_id=parcel_id), saga_id=saga_id):
            pass

    task = asyncio.ensure_future(run())
    while f"label:{parcel_id}" not in LEDGER:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    del GATE[parcel_id]
    gate.set()
    return saga_id


async def status_of(storage: SagaStorage, saga_id: uuid.UUID) -> SagaStatus:
    status, _, _ = await storage.load_saga_state(saga_id)
    return SagaStatus(status)


async def test_the_worker_finishes_an_interrupted_saga_without_rerunning_recorded_steps(
    storage: SagaStorage,
) -> None:
    saga_id = await interrupt_in_label(storage, "p1")
    assert await status_of(storage, saga_id) == SagaStatus.RUNNING
    LEDGER.clear()

    claimed = await worker_for(storage).run_once()

    assert claimed == 1
    assert await status_of(storage, saga_id) == SagaStatus.COMPLETED
    # Weigh was recorded before the interruption: it does not run again; Label was in flight, so it does.
    assert LEDGER == ["label:p1", "dispatch:p1:L-p1"]
    assert await worker_for(storage).run_once() == 0


async def test_the_worker_claims_only_sagas_it_knows_by_name(storage: SagaStorage) -> None:
    foreign = uuid.uuid4()
    await storage.create_saga(foreign, "SomeoneElsesSaga", {"anything": 1})

    before = await storage.get_saga(foreign)

    assert await worker_for(storage).run_once() == 0
    after = await storage.get_saga(foreign)
    assert before is not None and after is not None
    assert (after.status, after.owner, after.recovery_attempts) == (before.status, before.owner, 0)


async def test_a_saga_of_a_definition_version_the_worker_does_not_know_is_logged_and_not_run(
    storage: SagaStorage, caplog: pytest.LogCaptureFixture
) -> None:
    saga_id = uuid.uuid4()
    newer = NewSaga(
        saga_id=saga_id, name=ParcelSaga.name, context={"parcel_id": "p8"},
        definition_version=ParcelSaga.version + 1, status=SagaStatus.PENDING,
    )
    assert await storage.start_saga(newer, "gone-host:1:dead", 0.0) is not None  # its lease lapsed at once
    worker = worker_for(storage)

    with caplog.at_level(logging.ERROR, logger="cqrs"):
        assert await worker.run_once() == 1

    assert worker.recovered == {"unknown": 1}
    assert LEDGER == []
    assert await storage.get_step_history(saga_id) == []
    record = await storage.get_saga(saga_id)
    assert record is not None and record.owner is None and record.recovery_attempts == 1  # released
    assert any(
        str(saga_id) in r.getMessage() and f"version {ParcelSaga.version + 1}" in r.getMessage()
        for r in caplog.records
    )


async def test_a_context_that_no_longer_loads_counts_an_attempt_and_loses_nothing(
    storage: SagaStorage, caplog: pytest.LogCaptureFixture
) -> None:
    saga_id = uuid.uuid4()
    # As if a deploy renamed parcel_id: the stored context lacks a required field.
    stored = {"parcel": "p9", "label": None}
    await storage.create_saga(saga_id, ParcelSaga.name, stored)

    with caplog.at_level(logging.ERROR, logger="cqrs"):
        assert await worker_for(storage).run_once() == 1

    status, context, _ = await storage.load_saga_state(saga_id)
    assert status == SagaStatus.RUNNING
    assert context == stored
    record = await storage.get_saga(saga_id)
    assert record is not None and record.recovery_attempts == 1
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert str(saga_id) in message and "parcel_id" in message
    assert LEDGER == []


class FlakyStorage:
    """Delegates to a real storage, but its checkpoints fail like a dropped connection while `failing` is set."""

    def __init__(self, inner: SagaStorage) -> None:
        self.inner = inner
        self.failing = True

    async def checkpoint(self, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        if self.failing:
            raise ConnectionResetError("connection to the database was lost")
        return await self.inner.checkpoint(*args, **kwargs)

    def __getattr__(self, name: str) -> typing.Any:
        return getattr(self.inner, name)


async def test_storage_errors_leave_the_saga_recoverable_then_parked_after_max_attempts(
    storage: SagaStorage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cqrs")
    saga_id = await interrupt_in_label(storage, "p2")
    flaky = FlakyStorage(storage)
    worker = worker_for(typing.cast(SagaStorage, flaky), max_attempts=2)

    for attempt in (1, 2):
        assert await worker.run_once() == 1
        record = await storage.get_saga(saga_id)
        assert record is not None
        assert record.status == SagaStatus.RUNNING, "a storage error is not a saga failure"
        assert record.recovery_attempts == attempt
    assert worker.recovered == {"error": 2}
    # Each attempt's error is logged under the saga id (the parked saga's reason points there).
    interrupted = [r for r in caplog.records if r.getMessage().startswith(f"Recovery of saga {saga_id} interrupted")]
    assert len(interrupted) == 2 and all(r.exc_info for r in interrupted)

    # The third claim exceeds max_attempts: parked for an operator, nothing run.
    LEDGER.clear()
    assert await worker.run_once() == 1
    assert await status_of(storage, saga_id) == SagaStatus.PARKED
    assert LEDGER == []
    parked = await storage.list_sagas(status=SagaStatus.PARKED)
    assert [r.saga_id for r in parked] == [saga_id]
    assert parked[0].error is not None
    assert parked[0].error.startswith("parked after 2 recovery attempts that did not finish it")

    # An operator resets it once the database is healthy again; the next pass finishes it.
    await storage.reset_saga(saga_id)
    flaky.failing = False
    assert await worker.run_once() == 1
    assert await status_of(storage, saga_id) == SagaStatus.COMPLETED
    assert LEDGER[-1] == "dispatch:p2:L-p2"


async def test_run_stops_when_asked_and_recovers_meanwhile(storage: SagaStorage) -> None:
    saga_id = await interrupt_in_label(storage, "p3")
    worker = worker_for(storage)
    finished = asyncio.Event()

    async def watch() -> None:
        while await status_of(storage, saga_id) != SagaStatus.COMPLETED:
            await asyncio.sleep(0.01)
        finished.set()
        worker.stop()

    await asyncio.wait_for(asyncio.gather(worker.run(), watch()), timeout=30)
    assert finished.is_set()


WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, dataclasses, sys
    import di
    import cqrs
    from cqrs.saga.models import SagaContext
    from cqrs.saga.recovery import RecoveryWorker
    from cqrs.saga.saga import Saga
    from cqrs.saga.step import SagaStepHandler, SagaStepResult
    from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

    @dataclasses.dataclass
    class ParcelContext(SagaContext):
        parcel_id: str
        label: str | None = None

    class Done(cqrs.Response):
        value: str

    class Weigh(SagaStepHandler[ParcelContext, Done]):
        async def act(self, context):
            return self._generate_step_result(Done(value="weighed"))

    class Label(SagaStepHandler[ParcelContext, Done]):
        async def act(self, context):
            print("IN-LABEL", flush=True)
            await asyncio.Event().wait()  # never finishes: the worker is stopped meanwhile

    class Dispatch(Weigh):
        pass

    class ParcelSaga(Saga[ParcelContext]):
        steps = [Weigh, Label, Dispatch]

    async def main():
        storage = SqlAlchemySagaStorage.from_url(sys.argv[1])
        worker = RecoveryWorker([ParcelSaga], di.Container(), storage, poll_interval=0.05, shutdown_grace=0.2)
        worker.install_signal_handlers()
        await worker.run()
        await storage.close()
        print("STOPPED", dict(worker.recovered), flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_sigterm_stops_the_worker_and_its_in_flight_saga_stays_recoverable(
    sqlite_url: str, tmp_path: pathlib.Path
) -> None:
    storage = SqlAlchemySagaStorage.from_url(sqlite_url)
    await storage.create_tables()
    saga_id = await interrupt_in_label(storage, "p4")
    LEDGER.clear()
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)

    child = subprocess.Popen(
        [sys.executable, str(script), sqlite_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.to_thread(child.stdout.readline)
        assert line.strip() == "IN-LABEL", child.stderr.read() if child.stderr else line
        child.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(child.communicate, timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert "STOPPED" in out

    record = await storage.get_saga(saga_id)
    assert record is not None and record.status == SagaStatus.RUNNING
    # Nothing of Label was recorded by the stopped worker; recovery here finishes the saga.
    assert await worker_for(storage).run_once() == 1
    assert await status_of(storage, saga_id) == SagaStatus.COMPLETED
    assert LEDGER == ["label:p4", "dispatch:p4:L-p4"]
    await storage.close()
