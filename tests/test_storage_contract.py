"""The storage contract: one suite, run on the memory, SQLite (aiosqlite), PostgreSQL (asyncpg) and MariaDB
(asyncmy) storages.

Every method of `SagaStorage` is exercised here with its edge cases; a test
that holds only for the SQL storages (schema, indexes, commits, connections)
says so with `sql_only`. Nothing sleeps: time moves through `advance` (the
memory storage's fake clock; on SQL, every stored timestamp is shifted back,
which is the same thing to a storage that reads the database clock), and
races start together on an `asyncio.Event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import typing
import uuid

import di
import pytest
import sqlalchemy as sa

import cqrs
from cqrs.saga.bootstrap import bootstrap
from cqrs.saga.exceptions import SagaConcurrencyError, SagaNotFoundError
from cqrs.saga.mediator import SagaOutcome
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus, purge_filter
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.saga.storage.models import Lease, NewSaga, SagaClaim, SagaLogEntry, SagaRecord, StepEntry
from cqrs.saga.storage.protocol import SagaStorage
from cqrs.saga.storage.sqlalchemy import Base, SqlAlchemySagaStorage, saga_log
from cqrs.saga.storage.sqlalchemy._claim_statements import ClaimStatements
from cqrs.saga.storage.sqlalchemy._executors._asyncpg import Prepared
from cqrs.saga.storage.sqlalchemy._schema import family
from cqrs.saga.storage.sqlalchemy._statements import Statements
from saga.helpers import FakeClock

LEASE = 30.0
UTC = datetime.timezone.utc
JsonDict = dict[str, typing.Any]


# -- the storages ------------------------------------------------------------------------------------



@pytest.fixture
async def storage(storage_url: str) -> typing.AsyncIterator[SagaStorage]:
    """A fresh, empty storage of each kind: memory (with a fake clock), SQLite, PostgreSQL, MariaDB."""
    if storage_url == "memory://":
        store: SagaStorage = MemorySagaStorage(clock=FakeClock())
    else:
        sql = SqlAlchemySagaStorage.from_url(storage_url)
        await sql.create_tables()
        store = sql
    yield store
    await store.close()


def kind(storage: SagaStorage) -> str:
    """``memory``, ``sqlite``, ``postgresql`` or ``mysql`` (MariaDB and MySQL)."""
    if isinstance(storage, MemorySagaStorage):
        return "memory"
    assert isinstance(storage, SqlAlchemySagaStorage)
    return family(storage.engine.dialect.name)


def sql_only(storage: SagaStorage) -> SqlAlchemySagaStorage:
    if not isinstance(storage, SqlAlchemySagaStorage):
        pytest.skip("a property of the SQL storage")
    return storage


async def advance(storage: SagaStorage, seconds: float) -> None:
    """Let ``seconds`` pass (negative: go back) as far as ``storage`` can tell."""
    if isinstance(storage, MemorySagaStorage):
        clock = storage._clock
        assert isinstance(clock, FakeClock)
        clock.advance(seconds)
        return
    assert isinstance(storage, SqlAlchemySagaStorage)
    if kind(storage) == "postgresql":

        def shift(column: str) -> str:
            return f"{column} - make_interval(secs => {seconds!r})"
    elif kind(storage) == "mysql":

        def shift(column: str) -> str:
            return f"TIMESTAMPADD(MICROSECOND, {-round(seconds * 1_000_000)}, {column})"
    else:

        def shift(column: str) -> str:
            return f"strftime('%Y-%m-%d %H:%M:%f', {column}, '{-seconds:+.3f} seconds')"

    async with storage.engine.begin() as conn:
        columns = ", ".join(f"{c} = {shift(c)}" for c in ("created_at", "updated_at", "lease_expires_at"))
        await conn.exec_driver_sql(f"UPDATE saga_executions SET {columns}")
        await conn.exec_driver_sql(f"UPDATE saga_log SET created_at = {shift('created_at')}")


def another(storage: SagaStorage) -> SagaStorage:
    """A second storage on the same data, as another process would have (memory: the same one)."""
    if isinstance(storage, MemorySagaStorage):
        return storage
    assert isinstance(storage, SqlAlchemySagaStorage)
    return SqlAlchemySagaStorage.from_url(storage.engine.url)


def new_saga(
    name: str = "order",
    context: JsonDict | None = None,
    *,
    saga_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    status: SagaStatus = SagaStatus.RUNNING,
    definition_version: int = 1,
) -> NewSaga:
    return NewSaga(
        saga_id=saga_id or uuid.uuid4(),
        name=name,
        context=context if context is not None else {"order_id": "o-1"},
        definition_version=definition_version,
        correlation_id=correlation_id,
        status=status,
    )


async def started(
    storage: SagaStorage, owner: str = "runner-a", lease_seconds: float = LEASE, **saga: typing.Any
) -> tuple[uuid.UUID, Lease]:
    new = new_saga(**saga)
    lease = await storage.start_saga(new, owner, lease_seconds)
    assert lease is not None
    return new.saga_id, lease


def act(step: str, response: JsonDict | None = None, details: str | None = None) -> StepEntry:
    return StepEntry(step, "act", SagaStepStatus.COMPLETED, details, response)


async def record_of(storage: SagaStorage, saga_id: uuid.UUID) -> SagaRecord:
    record = await storage.get_saga(saga_id)
    assert record is not None
    return record


def steps(history: list[SagaLogEntry]) -> list[tuple[str, str, str]]:
    return [(e.step_name, e.action, SagaStepStatus(e.status).value) for e in history]


def moved(storage: SagaStorage, record: SagaRecord, seconds: float) -> SagaRecord:
    """``record`` as it reads after `advance` (on SQL the stored timestamps were shifted back)."""
    if kind(storage) == "memory":
        return record
    back = datetime.timedelta(seconds=seconds)
    return dataclasses.replace(
        record,
        created_at=aware(record.created_at) - back,
        updated_at=aware(record.updated_at) - back,
        lease_expires_at=None if record.lease_expires_at is None else record.lease_expires_at - back,
    )


def aware(value: datetime.datetime | None) -> datetime.datetime:
    assert value is not None and value.utcoffset() == datetime.timedelta(0)
    return value


# -- start_saga ---------------------------------------------------------------------------------------


async def test_start_saga_stores_a_running_saga_leased_to_its_starter(storage: SagaStorage) -> None:
    new = new_saga("order", {"order_id": "o-7"}, correlation_id="corr-1", definition_version=3)

    lease = await storage.start_saga(new, "runner-a", LEASE)

    assert lease == Lease(owner="runner-a", epoch=1)
    record = await record_of(storage, new.saga_id)
    assert (record.saga_id, record.name, record.status, record.context) == (
        new.saga_id, "order", SagaStatus.RUNNING, {"order_id": "o-7"},
    )
    assert (record.version, record.definition_version, record.correlation_id) == (1, 3, "corr-1")
    assert (record.owner, record.lease_epoch, record.recovery_attempts, record.error) == ("runner-a", 1, 0, None)
    created, updated, expires = aware(record.created_at), aware(record.updated_at), aware(record.lease_expires_at)
    assert created == updated
    assert datetime.timedelta(seconds=LEASE - 1) <= expires - created <= datetime.timedelta(seconds=LEASE + 1)
    assert type(record.status) is SagaStatus
    assert await storage.get_step_history(new.saga_id) == []


async def test_start_saga_can_store_a_pending_saga(storage: SagaStorage) -> None:
    new = new_saga(status=SagaStatus.PENDING)
    assert await storage.start_saga(new, "runner-a", LEASE) == Lease("runner-a", 1)
    assert (await record_of(storage, new.saga_id)).status == SagaStatus.PENDING


async def test_a_second_start_of_the_same_id_returns_none_and_changes_nothing(storage: SagaStorage) -> None:
    saga_id, _ = await started(storage, context={"first": True}, correlation_id="c-1")
    before = await record_of(storage, saga_id)
    await advance(storage, 5)

    again = new_saga("other-name", {"second": True}, saga_id=saga_id, correlation_id="c-2")
    assert await storage.start_saga(again, "runner-b", LEASE) is None
    assert await storage.start_saga(again, "runner-a", LEASE) is None

    assert await record_of(storage, saga_id) == moved(storage, before, 5)
    assert await storage.get_step_history(saga_id) == []


async def test_concurrent_starts_of_one_id_grant_exactly_one_lease(storage: SagaStorage) -> None:
    others = [another(storage) for _ in range(6)]
    saga_id = uuid.uuid4()

    def start(store: SagaStorage, owner: str) -> typing.Callable[[], typing.Awaitable[Lease | None]]:
        return lambda: store.start_saga(new_saga(saga_id=saga_id), owner, LEASE)

    try:
        leases = await all_at_once([start(s, f"runner-{i}") for i, s in enumerate([storage, *others])])
    finally:
        await close_others(storage, others)
    granted = [lease for lease in leases if lease is not None]
    assert len(granted) == 1
    assert (await record_of(storage, saga_id)).owner == granted[0].owner


T = typing.TypeVar("T")


async def all_at_once(calls: list[typing.Callable[[], typing.Awaitable[T]]]) -> list[T]:
    """Run ``calls`` concurrently, each starting only once every one of them is ready to start."""
    arrived = 0
    go = asyncio.Event()

    async def run(call: typing.Callable[[], typing.Awaitable[T]]) -> T:
        nonlocal arrived
        arrived += 1
        if arrived == len(calls):
            go.set()
        await go.wait()
        return await call()

    return list(await asyncio.gather(*(run(call) for call in calls)))


async def close_others(storage: SagaStorage, others: typing.Iterable[SagaStorage]) -> None:
    for other in others:
        if other is not storage:
            await other.close()


# -- claim_saga ----------------------------------------------------------------------------------------


async def test_claim_saga_of_an_unknown_id_is_none(storage: SagaStorage) -> None:
    assert await storage.claim_saga(uuid.uuid4(), "runner-a", LEASE) is None


async def test_a_live_lease_is_exclusive(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage)
    assert await storage.checkpoint(saga_id, lease, entry=act("reserve", {"r": 1}), lease_seconds=LEASE)
    before = await record_of(storage, saga_id)

    claim = await storage.claim_saga(saga_id, "runner-b", LEASE)

    assert claim is not None
    assert claim.lease is None and claim.busy
    assert claim.record == before
    assert steps(claim.history) == [("reserve", "act", "completed")]
    assert await record_of(storage, saga_id) == before
    # The holder is unaffected.
    assert await storage.renew_lease(saga_id, lease, LEASE)


async def test_an_expired_lease_is_taken_over_and_the_stale_owner_is_fenced(storage: SagaStorage) -> None:
    saga_id, stale = await started(storage, context={"n": 0})
    assert await storage.checkpoint(saga_id, stale, entry=act("one"), context={"n": 1}, lease_seconds=LEASE)
    await advance(storage, LEASE + 1)

    claim = await storage.claim_saga(saga_id, "runner-b", LEASE)

    assert claim is not None and not claim.busy
    fresh = claim.lease
    assert fresh == Lease(owner="runner-b", epoch=2)
    assert (claim.record.owner, claim.record.lease_epoch, claim.record.context) == ("runner-b", 2, {"n": 1})
    assert aware(claim.record.lease_expires_at) > aware(claim.record.updated_at)
    assert steps(claim.history) == [("one", "act", "completed")]
    before = await record_of(storage, saga_id)

    # The stale runner's writes match nothing and write nothing.
    assert not await storage.checkpoint(
        saga_id, stale, entry=act("two"), context={"n": 99}, status=SagaStatus.COMPLETED, error="x",
        lease_seconds=LEASE,
    )
    assert not await storage.checkpoint(saga_id, stale, entry=None, context={"n": 98}, lease_seconds=LEASE)
    assert not await storage.checkpoint(saga_id, stale, entry=act("two"), lease_seconds=LEASE, release=True)
    assert not await storage.renew_lease(saga_id, stale, LEASE)
    assert not await storage.release_lease(saga_id, stale)
    assert await record_of(storage, saga_id) == before
    assert steps(await storage.get_step_history(saga_id)) == [("one", "act", "completed")]

    # The new owner writes.
    assert fresh is not None
    assert await storage.checkpoint(saga_id, fresh, entry=act("two"), context={"n": 2}, lease_seconds=LEASE)
    assert (await storage.load_saga_state(saga_id))[1] == {"n": 2}


async def test_the_stale_owner_cannot_claim_back_a_live_lease(storage: SagaStorage) -> None:
    saga_id, _ = await started(storage, lease_seconds=0)
    await advance(storage, 1)
    assert (claim := await storage.claim_saga(saga_id, "runner-b", LEASE)) is not None and claim.lease
    again = await storage.claim_saga(saga_id, "runner-a", LEASE)
    assert again is not None and again.busy and again.lease is None
    assert (await record_of(storage, saga_id)).owner == "runner-b"


async def test_a_claim_by_the_same_owner_bumps_the_epoch_and_fences_its_older_lease(storage: SagaStorage) -> None:
    saga_id, first = await started(storage)

    claim = await storage.claim_saga(saga_id, "runner-a", LEASE)

    assert claim is not None and claim.lease == Lease("runner-a", 2) and not claim.busy
    assert not await storage.checkpoint(saga_id, first, entry=act("one"), lease_seconds=LEASE)
    assert not await storage.renew_lease(saga_id, first, LEASE)
    assert await storage.checkpoint(saga_id, claim.lease, entry=act("one"), lease_seconds=LEASE)


async def test_a_released_lease_can_be_claimed_at_once(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage)

    assert await storage.release_lease(saga_id, lease)
    record = await record_of(storage, saga_id)
    assert (record.owner, record.lease_expires_at, record.lease_epoch) == (None, None, 1)
    # A released lease is gone for its holder too.
    assert not await storage.renew_lease(saga_id, lease, LEASE)
    assert not await storage.release_lease(saga_id, lease)
    assert not await storage.checkpoint(saga_id, lease, entry=act("x"), lease_seconds=LEASE)

    claim = await storage.claim_saga(saga_id, "runner-b", LEASE)
    assert claim is not None and claim.lease == Lease("runner-b", 2)


async def test_a_checkpoint_appends_several_entries_in_order_in_one_commit(storage: SagaStorage) -> None:
    """How a failed saga's compensations are recorded together: every row, in order, with the final status,
    the lease released and the outbox rows; a fenced writer writes none of it."""
    from cqrs.outbox.models import OutboxMessage

    saga_id, lease = await started(storage)
    assert await storage.checkpoint(saga_id, lease, entry=act("one"), lease_seconds=LEASE)
    failed = StepEntry("two", "act", SagaStepStatus.FAILED, "declined")
    undone = [
        StepEntry("one", "compensate", SagaStepStatus.COMPENSATED),
        StepEntry("zero", "compensate", SagaStepStatus.FAILED, "still down", {"tried": 3}),
    ]
    message = OutboxMessage(uuid.uuid4(), "orders", "Undone", {"order": 1}, {"saga-id": str(saga_id)})
    stale = Lease(lease.owner, lease.epoch - 1)
    assert not await storage.checkpoint(saga_id, stale, entry=failed, entries=undone, lease_seconds=LEASE)
    assert steps(await storage.get_step_history(saga_id)) == [("one", "act", "completed")]

    assert await storage.checkpoint(
        saga_id, lease, entry=failed, entries=undone, status=SagaStatus.COMPENSATION_FAILED, error="declined",
        lease_seconds=LEASE, release=True, outbox=[message],
    )
    history = await storage.get_step_history(saga_id)
    assert steps(history) == [
        ("one", "act", "completed"), ("two", "act", "failed"),
        ("one", "compensate", "compensated"), ("zero", "compensate", "failed"),
    ]
    assert (history[-1].details, history[-1].response) == ("still down", {"tried": 3})
    record = await record_of(storage, saga_id)
    assert (record.status, record.error, record.owner) == (SagaStatus.COMPENSATION_FAILED, "declined", None)
    assert [row.message_id for row in await storage.list_outbox(saga_id=saga_id)] == [  # type: ignore[attr-defined]
        message.message_id
    ]
    # Without an entry of its own, and without outbox rows.
    saga_two, lease_two = await started(storage)
    assert await storage.checkpoint(saga_two, lease_two, entry=None, entries=undone, lease_seconds=LEASE)
    assert steps(await storage.get_step_history(saga_two)) == [
        ("one", "compensate", "compensated"), ("zero", "compensate", "failed"),
    ]


async def test_claiming_a_pending_saga_makes_it_running(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id, "order", {"a": 1})  # stored at epoch 1, unleased

    claim = await storage.claim_saga(saga_id, "runner-a", LEASE)

    assert claim is not None and claim.lease == Lease("runner-a", 2)
    assert claim.record.status == SagaStatus.RUNNING
    assert (await record_of(storage, saga_id)).status == SagaStatus.RUNNING


@pytest.mark.parametrize("final", [SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.PARKED])
async def test_a_final_saga_is_returned_with_its_history_but_no_lease(
    storage: SagaStorage, final: SagaStatus
) -> None:
    saga_id, lease = await started(storage)
    assert await storage.checkpoint(
        saga_id, lease, entry=act("only", {"ok": True}), status=final, lease_seconds=LEASE, release=True
    )
    before = await record_of(storage, saga_id)

    claim = await storage.claim_saga(saga_id, "runner-b", LEASE)

    assert claim is not None
    assert (claim.lease, claim.busy, claim.record) == (None, False, before)
    assert [e.response for e in claim.history] == [{"ok": True}]
    assert await record_of(storage, saga_id) == before


@pytest.mark.parametrize("status", [SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED])
async def test_a_compensating_saga_is_claimed_without_changing_its_status(
    storage: SagaStorage, status: SagaStatus
) -> None:
    saga_id, lease = await started(storage)
    assert await storage.checkpoint(saga_id, lease, entry=None, status=status, lease_seconds=LEASE, release=True)

    claim = await storage.claim_saga(saga_id, "runner-b", LEASE)

    assert claim is not None and claim.lease == Lease("runner-b", 2)
    assert claim.record.status == status


async def test_concurrent_claims_of_one_saga_grant_one_lease(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage)
    assert await storage.release_lease(saga_id, lease)
    others = [another(storage) for _ in range(7)]

    def claim(store: SagaStorage, owner: str) -> typing.Callable[[], typing.Awaitable[Lease | None]]:
        async def call() -> Lease | None:
            result = await store.claim_saga(saga_id, owner, LEASE)
            assert result is not None
            return result.lease

        return call

    try:
        leases = await all_at_once([claim(s, f"runner-{i}") for i, s in enumerate([storage, *others])])
    finally:
        await close_others(storage, others)
    granted = [lease for lease in leases if lease is not None]
    assert granted == [Lease(granted[0].owner, 2)]
    assert (await record_of(storage, saga_id)).owner == granted[0].owner


# -- checkpoint ----------------------------------------------------------------------------------------


async def test_a_checkpoint_writes_entry_context_status_and_error_together(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage, context={"step": 0})
    before = await record_of(storage, saga_id)
    await advance(storage, 10)

    ok = await storage.checkpoint(
        saga_id,
        lease,
        entry=StepEntry("pay", "act", SagaStepStatus.FAILED, "card declined", {"code": 51}),
        context={"step": 1, "paid": False},
        status=SagaStatus.COMPENSATING,
        error="CardError: declined",
        lease_seconds=LEASE,
    )

    assert ok
    record = await record_of(storage, saga_id)
    assert (record.status, record.context, record.error, record.version) == (
        SagaStatus.COMPENSATING, {"step": 1, "paid": False}, "CardError: declined", 2,
    )
    assert (record.owner, record.lease_epoch) == ("runner-a", 1)
    assert aware(record.updated_at) > aware(record.created_at)
    # The lease was renewed from the checkpoint's time.
    assert aware(record.lease_expires_at) - aware(record.updated_at) >= datetime.timedelta(seconds=LEASE - 1)
    assert aware(record.lease_expires_at) > aware(before.lease_expires_at) - datetime.timedelta(seconds=10)
    [entry] = await storage.get_step_history(saga_id)
    assert (entry.saga_id, entry.step_name, entry.action, entry.status, entry.details, entry.response) == (
        saga_id, "pay", "act", SagaStepStatus.FAILED, "card declined", {"code": 51},
    )
    assert type(entry.status) is SagaStepStatus
    # Written together (SQLite's clock may tick a millisecond between the two statements).
    assert abs(aware(entry.timestamp) - aware(record.updated_at)) < datetime.timedelta(seconds=1)


async def test_a_checkpoint_without_entry_context_or_status_changes_only_what_it_is_given(
    storage: SagaStorage,
) -> None:
    saga_id, lease = await started(storage, context={"keep": "me"})

    assert await storage.checkpoint(saga_id, lease, entry=None, lease_seconds=LEASE)
    record = await record_of(storage, saga_id)
    assert (record.status, record.context, record.error, record.version) == (
        SagaStatus.RUNNING, {"keep": "me"}, None, 2,
    )
    assert await storage.get_step_history(saga_id) == []

    assert await storage.checkpoint(saga_id, lease, entry=act("one"), lease_seconds=LEASE)
    record = await record_of(storage, saga_id)
    assert (record.status, record.context, record.version) == (SagaStatus.RUNNING, {"keep": "me"}, 3)

    assert await storage.checkpoint(saga_id, lease, entry=None, status=SagaStatus.COMPLETED, lease_seconds=LEASE)
    assert (await record_of(storage, saga_id)).status == SagaStatus.COMPLETED


async def test_a_releasing_checkpoint_frees_the_saga(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage)

    assert await storage.checkpoint(
        saga_id, lease, entry=act("last"), context={"done": True}, status=SagaStatus.COMPLETED,
        lease_seconds=LEASE, release=True,
    )

    record = await record_of(storage, saga_id)
    assert (record.status, record.owner, record.lease_expires_at, record.lease_epoch) == (
        SagaStatus.COMPLETED, None, None, 1,
    )
    assert not await storage.checkpoint(saga_id, lease, entry=act("again"), lease_seconds=LEASE)
    assert steps(await storage.get_step_history(saga_id)) == [("last", "act", "completed")]


async def test_a_checkpoint_of_an_unknown_saga_is_false(storage: SagaStorage) -> None:
    unknown = uuid.uuid4()
    assert not await storage.checkpoint(unknown, Lease("runner-a", 1), entry=act("x"), lease_seconds=LEASE)
    assert not await storage.checkpoint(unknown, Lease("runner-a", 1), entry=None, lease_seconds=LEASE)
    assert not await storage.renew_lease(unknown, Lease("runner-a", 1), LEASE)
    assert not await storage.release_lease(unknown, Lease("runner-a", 1))
    assert await storage.get_saga(unknown) is None


async def test_a_checkpoint_that_fails_midway_writes_nothing(storage: SagaStorage) -> None:
    # The SQL storages serialize what they are given, so bad JSON fails there; the memory storage keeps
    # the engine's own JSON as it is (see the protocol) and never has to refuse it.
    sql_only(storage)
    saga_id, lease = await started(storage, context={"n": 0})
    before = await record_of(storage, saga_id)

    # The log entry cannot be stored (its response is not JSON): neither is the rest of the checkpoint.
    with pytest.raises((TypeError, sa.exc.StatementError)):
        await storage.checkpoint(
            saga_id, lease, entry=act("bad", {"gen": (i for i in range(3))}), context={"n": 1},
            status=SagaStatus.COMPLETED, lease_seconds=LEASE,
        )

    assert await record_of(storage, saga_id) == before
    assert await storage.get_step_history(saga_id) == []
    assert await storage.checkpoint(saga_id, lease, entry=act("good"), context={"n": 1}, lease_seconds=LEASE)


async def test_renew_lease_pushes_the_expiry_from_now(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage, lease_seconds=5)
    await advance(storage, 4)

    assert await storage.renew_lease(saga_id, lease, 60)

    record = await record_of(storage, saga_id)
    assert aware(record.lease_expires_at) - aware(record.created_at) >= datetime.timedelta(seconds=63)
    await advance(storage, 10)
    claim = await storage.claim_saga(saga_id, "runner-b", LEASE)
    assert claim is not None and claim.busy


# -- the step log --------------------------------------------------------------------------------------


async def test_history_is_in_write_order_even_when_the_clock_goes_back(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage)
    names = ["one", "two", "three", "four"]
    for name in names:
        assert await storage.checkpoint(saga_id, lease, entry=act(name), lease_seconds=LEASE)
        await advance(storage, -60)  # the next entry is stamped a minute *earlier*

    history = await storage.get_step_history(saga_id)

    assert [e.step_name for e in history] == names
    assert [e.seq for e in history] == sorted(e.seq for e in history)
    assert len({e.seq for e in history}) == len(names)
    stamps = [aware(e.timestamp) for e in history]
    assert stamps == sorted(stamps, reverse=True)  # the premise: timestamps disagree with the order
    claim = await storage.claim_saga(saga_id, "runner-a", LEASE)
    assert claim is not None and [e.step_name for e in claim.history] == names


async def test_responses_are_stored_with_their_entries(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage)
    responses: list[JsonDict | None] = [
        {"reservation_id": "r-1", "lines": [{"sku": "a", "qty": 2}], "meta": {"nested": {"deep": [1, 2.5, None]}}},
        None,
        {},
    ]
    for index, response in enumerate(responses):
        entry = StepEntry(f"s{index}", "act", SagaStepStatus.COMPLETED, f"details {index}", response)
        assert await storage.checkpoint(saga_id, lease, entry=entry, lease_seconds=LEASE)
    entry = StepEntry("s0", "compensate", SagaStepStatus.COMPENSATED, None, None)
    assert await storage.checkpoint(saga_id, lease, entry=entry, lease_seconds=LEASE)

    history = await storage.get_step_history(saga_id)

    assert [e.response for e in history] == [*responses, None]
    assert [e.details for e in history] == ["details 0", "details 1", "details 2", None]
    assert steps(history)[-1] == ("s0", "compensate", "compensated")
    assert all(e.saga_id == saga_id for e in history)


async def test_histories_of_two_sagas_do_not_mix(storage: SagaStorage) -> None:
    first, first_lease = await started(storage)
    second, second_lease = await started(storage)
    for name in ("a", "b"):
        assert await storage.checkpoint(first, first_lease, entry=act(f"1{name}"), lease_seconds=LEASE)
        assert await storage.checkpoint(second, second_lease, entry=act(f"2{name}"), lease_seconds=LEASE)

    assert [e.step_name for e in await storage.get_step_history(first)] == ["1a", "1b"]
    assert [e.step_name for e in await storage.get_step_history(second)] == ["2a", "2b"]


async def test_log_step_appends_to_the_same_ordered_history(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id, "order", {})
    await storage.log_step(saga_id, "reserve", "act", SagaStepStatus.STARTED)
    await storage.log_step(saga_id, "reserve", "act", SagaStepStatus.COMPLETED, "ok")
    claim = await storage.claim_saga(saga_id, "runner-a", LEASE)
    assert claim is not None and claim.lease is not None
    assert await storage.checkpoint(saga_id, claim.lease, entry=act("pay", {"p": 1}), lease_seconds=LEASE)
    await storage.log_step(saga_id, "pay", "compensate", SagaStepStatus.COMPENSATED)

    history = await storage.get_step_history(saga_id)

    assert steps(history) == [
        ("reserve", "act", "started"),
        ("reserve", "act", "completed"),
        ("pay", "act", "completed"),
        ("pay", "compensate", "compensated"),
    ]
    assert [e.details for e in history] == [None, "ok", None, None]
    assert [e.response for e in history] == [None, None, {"p": 1}, None]
    with pytest.raises(SagaNotFoundError):
        await storage.log_step(uuid.uuid4(), "x", "act", SagaStepStatus.COMPLETED)


async def test_get_history_tells_an_unknown_saga_from_an_empty_history(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage)
    assert await storage.get_history(saga_id) == []
    assert await storage.get_history(uuid.uuid4()) is None
    # python-cqrs's get_step_history has no "unknown": it is an empty history there.
    assert await storage.get_step_history(uuid.uuid4()) == []

    assert await storage.checkpoint(saga_id, lease, entry=act("one", {"r": 1}, "ok"), lease_seconds=LEASE)
    [entry] = await storage.get_history(saga_id) or []
    assert (entry.saga_id, entry.step_name, entry.details, entry.response) == (saga_id, "one", "ok", {"r": 1})
    assert await storage.get_step_history(saga_id) == [entry]


# -- claim_recoverable ---------------------------------------------------------------------------------


async def test_claim_recoverable_takes_only_resumable_sagas_without_a_live_lease(storage: SagaStorage) -> None:
    async def with_status(status: SagaStatus | None, *, release: bool, lease_seconds: float = LEASE) -> uuid.UUID:
        saga_id, lease = await started(storage, lease_seconds=lease_seconds)
        if status is not None or release:
            assert await storage.checkpoint(
                saga_id, lease, entry=None, status=status, lease_seconds=lease_seconds, release=release
            )
        return saga_id

    live = await with_status(None, release=False)
    live_compensating = await with_status(SagaStatus.COMPENSATING, release=False)
    expired = await with_status(None, release=False, lease_seconds=10)
    released = await with_status(None, release=True)
    compensating = await with_status(SagaStatus.COMPENSATING, release=True)
    compensation_failed = await with_status(SagaStatus.COMPENSATION_FAILED, release=True)
    finals = [await with_status(s, release=True) for s in (SagaStatus.COMPLETED, SagaStatus.FAILED)]
    parked = await with_status(None, release=True)
    await storage.park_saga(parked, "by hand")
    pending = uuid.uuid4()
    await storage.create_saga(pending, "order", {"p": 1})
    await advance(storage, 11)  # `expired`'s lease ran out, the others' did not
    untouched = {s: await record_of(storage, s) for s in (live, live_compensating, *finals, parked)}

    claimed = await storage.claim_recoverable("recoverer", 60, limit=100)

    by_id = {c.record.saga_id: c.record for c in claimed}
    assert set(by_id) == {expired, released, compensating, compensation_failed, pending}
    for claim in claimed:
        assert claim.lease == Lease("recoverer", claim.record.lease_epoch) and not claim.busy
    for saga_id, record in by_id.items():
        assert record.owner == "recoverer"
        assert record.recovery_attempts == 1
        assert aware(record.lease_expires_at) - aware(record.updated_at) >= datetime.timedelta(seconds=59)
        assert record == await record_of(storage, saga_id)
    assert by_id[pending].status == SagaStatus.RUNNING and by_id[pending].lease_epoch == 2  # created at 1
    assert by_id[expired].lease_epoch == 2 and by_id[released].lease_epoch == 2
    assert by_id[compensating].status == SagaStatus.COMPENSATING
    assert by_id[compensation_failed].status == SagaStatus.COMPENSATION_FAILED
    for saga_id, before in untouched.items():
        assert await record_of(storage, saga_id) == before
    # Claimed sagas now hold a live lease.
    assert await storage.claim_recoverable("another", 60, limit=100) == []
    # The claim is a lease like any other: the previous holder of `expired` is fenced.
    assert not await storage.renew_lease(expired, Lease("runner-a", 1), LEASE)
    assert await storage.renew_lease(expired, Lease("recoverer", 2), LEASE)


async def test_claim_recoverable_respects_limit_names_and_max_attempts(storage: SagaStorage) -> None:
    ids: list[uuid.UUID] = []
    for index in range(5):
        saga_id, lease = await started(storage, name="order" if index < 4 else "refund")
        assert await storage.release_lease(saga_id, lease)
        ids.append(saga_id)
        await advance(storage, 1)
    assert await storage.claim_recoverable("r", LEASE, limit=0) == []

    first = records(await storage.claim_recoverable("r", 0, limit=2, names=["order"]))
    assert len(first) == 2 and all(r.name == "order" for r in first)
    assert [r.saga_id for r in first] == ids[:2]  # free leases, oldest first

    await advance(storage, 1)  # the zero-second leases above have lapsed
    await storage.set_recovery_attempts(ids[2], 3)
    second = records(await storage.claim_recoverable("r", LEASE, limit=10, names={"order"}, max_attempts=3))
    assert {r.saga_id for r in second} == {ids[0], ids[1], ids[3]}
    assert {r.saga_id: r.recovery_attempts for r in second} == {ids[0]: 2, ids[1]: 2, ids[3]: 1}

    third = records(await storage.claim_recoverable("r", LEASE, limit=10, names=["refund", "nothing"]))
    assert [r.saga_id for r in third] == [ids[4]]
    assert await storage.claim_recoverable("r", LEASE, limit=10, names=[]) == []
    # Without max_attempts, the saga skipped above is claimed as well.
    fourth = records(await storage.claim_recoverable("r", LEASE, limit=10))
    assert [(r.saga_id, r.recovery_attempts) for r in fourth] == [(ids[2], 4)]


async def test_claim_recoverable_takes_the_longest_expired_first(storage: SagaStorage) -> None:
    ids = []
    for lease_seconds in (30, 10, 20):
        saga_id, _ = await started(storage, lease_seconds=lease_seconds)
        ids.append(saga_id)
    await advance(storage, 31)

    claimed = [c.record.saga_id for c in await storage.claim_recoverable("r", LEASE, limit=2)]

    assert set(claimed) == {ids[1], ids[2]}


def records(claims: list[SagaClaim]) -> list[SagaRecord]:
    return [claim.record for claim in claims]


async def test_claim_recoverable_hands_out_each_saga_with_its_history(storage: SagaStorage) -> None:
    """A recoverer needs the history of every saga it claims: it comes with the claim, as with `claim_saga`."""
    histories: dict[uuid.UUID, list[tuple[str, str, str]]] = {}
    for steps_done in (0, 1, 3):
        saga_id, lease = await started(storage)
        for step in range(steps_done):
            entry = StepEntry(f"s{step}", "act", SagaStepStatus.COMPLETED, f"d{step}", {"step": step, "n": [1.5]})
            assert await storage.checkpoint(saga_id, lease, entry=entry, context={"at": step}, lease_seconds=LEASE)
        assert await storage.release_lease(saga_id, lease)
        histories[saga_id] = [(f"s{step}", "act", "completed") for step in range(steps_done)]
    other, lease = await started(storage)  # leased: neither claimed nor mixed into the others' histories
    assert await storage.checkpoint(other, lease, entry=act("other"), lease_seconds=LEASE)

    claimed = await storage.claim_recoverable("r", LEASE, limit=10)

    assert {c.record.saga_id: steps(c.history) for c in claimed} == histories
    for claim in claimed:
        assert claim.history == await storage.get_history(claim.record.saga_id)
        assert all(entry.saga_id == claim.record.saga_id for entry in claim.history)
        assert [e.response for e in claim.history] == [{"step": i, "n": [1.5]} for i in range(len(claim.history))]
        assert [e.details for e in claim.history] == [f"d{i}" for i in range(len(claim.history))]
        assert all(aware(e.timestamp) <= aware(claim.record.updated_at) for e in claim.history)
        assert [type(e.status) for e in claim.history] == [SagaStepStatus] * len(claim.history)


async def test_concurrent_recoverers_never_claim_the_same_saga(storage: SagaStorage) -> None:
    ids = set()
    for _ in range(50):
        saga_id, lease = await started(storage)
        assert await storage.release_lease(saga_id, lease)
        ids.add(saga_id)
    others = [another(storage) for _ in range(7)]

    def recoverer(store: SagaStorage, owner: str) -> typing.Callable[[], typing.Awaitable[list[uuid.UUID]]]:
        async def call() -> list[uuid.UUID]:
            mine: list[uuid.UUID] = []
            while batch := records(await store.claim_recoverable(owner, LEASE, limit=3)):
                assert all(r.owner == owner for r in batch)
                mine.extend(r.saga_id for r in batch)
                await asyncio.sleep(0)  # a yield, not a wait: the memory storage's calls never suspend
            return mine

        return call

    try:
        results = await all_at_once([recoverer(s, f"recoverer-{i}") for i, s in enumerate([storage, *others])])
    finally:
        await close_others(storage, others)

    claimed = [saga_id for result in results for saga_id in result]
    assert len(claimed) == len(set(claimed)) == 50
    assert set(claimed) == ids
    for index, result in enumerate(results):
        for saga_id in result:
            record = await record_of(storage, saga_id)
            assert (record.owner, record.lease_epoch, record.recovery_attempts) == (f"recoverer-{index}", 2, 1)


# -- the python-cqrs-shaped API --------------------------------------------------------------------------


async def test_create_saga_stores_a_pending_unleased_saga(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()

    await storage.create_saga(saga_id, "order", {"a": [1, 2]}, correlation_id="c-9")

    record = await record_of(storage, saga_id)
    assert (record.name, record.status, record.context, record.version, record.correlation_id) == (
        "order", SagaStatus.PENDING, {"a": [1, 2]}, 1, "c-9",
    )
    # Written as a start and a release (epoch 1), so no owner holds it: recovery may take it up at once.
    assert (record.owner, record.lease_epoch, record.lease_expires_at, record.recovery_attempts) == (None, 1, None, 0)
    assert record.definition_version == 1
    assert await storage.load_saga_state(saga_id) == (SagaStatus.PENDING, {"a": [1, 2]}, 1)
    with pytest.raises(ValueError, match="already stored"):
        await storage.create_saga(saga_id, "order", {})
    assert (await record_of(storage, saga_id)).context == {"a": [1, 2]}
    assert [c.record.saga_id for c in await storage.claim_recoverable("r", LEASE, limit=10)] == [saga_id]


async def test_update_context_and_status_bump_the_version(storage: SagaStorage) -> None:
    saga_id = uuid.uuid4()
    await storage.create_saga(saga_id, "order", {"v": 0})

    await storage.update_context(saga_id, {"v": 1})
    await storage.update_context(saga_id, {"v": 2}, current_version=2)
    await storage.update_status(saga_id, SagaStatus.RUNNING)

    assert await storage.load_saga_state(saga_id) == (SagaStatus.RUNNING, {"v": 2}, 4)
    with pytest.raises(SagaConcurrencyError, match="version 4"):
        await storage.update_context(saga_id, {"v": 3}, current_version=3)
    assert await storage.load_saga_state(saga_id) == (SagaStatus.RUNNING, {"v": 2}, 4)
    status, _, _ = await storage.load_saga_state(saga_id, read_for_update=True)
    assert type(status) is SagaStatus


async def test_load_saga_state_of_an_unknown_saga_raises_saga_not_found(storage: SagaStorage) -> None:
    unknown = uuid.uuid4()
    with pytest.raises(SagaNotFoundError) as raised:
        await storage.load_saga_state(unknown)
    assert raised.value.saga_id == unknown
    assert isinstance(raised.value, LookupError)
    assert isinstance(raised.value, ValueError)  # what python-cqrs raises


@pytest.mark.parametrize(
    "call",
    [
        lambda s, i: s.update_context(i, {}),
        lambda s, i: s.update_context(i, {}, current_version=1),
        lambda s, i: s.update_status(i, SagaStatus.RUNNING),
        lambda s, i: s.increment_recovery_attempts(i),
        lambda s, i: s.set_recovery_attempts(i, 1),
        lambda s, i: s.park_saga(i, "why"),
        lambda s, i: s.reset_saga(i),
        lambda s, i: s.log_step(i, "x", "act", SagaStepStatus.COMPLETED),
        lambda s, i: s.load_saga_state(i, read_for_update=True),
    ],
    ids=[
        "update_context", "update_context_versioned", "update_status", "increment_recovery_attempts",
        "set_recovery_attempts", "park_saga", "reset_saga", "log_step", "load_saga_state",
    ],
)
async def test_writes_to_an_unknown_saga_raise_saga_not_found(
    storage: SagaStorage, call: typing.Callable[[SagaStorage, uuid.UUID], typing.Awaitable[object]]
) -> None:
    unknown = uuid.uuid4()
    with pytest.raises(SagaNotFoundError) as raised:
        await call(storage, unknown)
    assert isinstance(raised.value, ValueError)
    assert await storage.get_saga(unknown) is None
    assert await storage.list_sagas() == []


async def test_get_sagas_for_recovery_lists_resumable_unleased_sagas(storage: SagaStorage) -> None:
    """Oldest first (by creation, as `list_sagas`); each saga below is created a second after the one before."""
    stale, lease = await started(storage, name="order")
    assert await storage.release_lease(stale, lease)
    await advance(storage, 100)
    other_name, lease = await started(storage, name="refund")
    assert await storage.release_lease(other_name, lease)
    await advance(storage, 1)
    await started(storage, name="order")  # leased: not listed
    await advance(storage, 1)
    worn_out, lease = await started(storage, name="order")
    assert await storage.release_lease(worn_out, lease)
    await storage.set_recovery_attempts(worn_out, 5)
    await advance(storage, 1)
    done, lease = await started(storage, name="order")
    assert await storage.checkpoint(done, lease, entry=None, status=SagaStatus.COMPLETED, lease_seconds=0, release=True)
    await advance(storage, 1)
    fresh, lease = await started(storage, name="order")
    assert await storage.release_lease(fresh, lease)
    await advance(storage, 10)

    assert await storage.get_sagas_for_recovery(10) == [stale, other_name, fresh]
    assert await storage.get_sagas_for_recovery(1) == [stale]
    assert await storage.get_sagas_for_recovery(10, saga_name="order") == [stale, fresh]
    assert await storage.get_sagas_for_recovery(10, stale_after_seconds=50) == [stale]
    assert await storage.get_sagas_for_recovery(10, max_recovery_attempts=6) == [stale, other_name, worn_out, fresh]
    assert await storage.get_sagas_for_recovery(0) == []
    # A read: nothing was claimed.
    assert (await record_of(storage, stale)).owner is None


async def test_recovery_attempts_are_counted_and_set(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage)
    assert await storage.release_lease(saga_id, lease)

    assert [c.record.recovery_attempts for c in await storage.claim_recoverable("r", 0, limit=1)] == [1]
    await advance(storage, 1)
    await storage.increment_recovery_attempts(saga_id)
    assert (await record_of(storage, saga_id)).recovery_attempts == 2
    await storage.increment_recovery_attempts(saga_id, SagaStatus.PARKED)
    record = await record_of(storage, saga_id)
    assert (record.recovery_attempts, record.status) == (3, SagaStatus.PARKED)
    await storage.set_recovery_attempts(saga_id, 0)
    assert (await record_of(storage, saga_id)).recovery_attempts == 0


# -- operators ---------------------------------------------------------------------------------------------


async def test_get_saga_of_an_unknown_id_is_none(storage: SagaStorage) -> None:
    assert await storage.get_saga(uuid.uuid4()) is None


async def test_list_sagas_filters_by_status_name_age_and_correlation_id(storage: SagaStorage) -> None:
    old_order, lease = await started(storage, name="order", correlation_id="req-1")
    assert await storage.checkpoint(
        old_order, lease, entry=None, status=SagaStatus.COMPLETED, lease_seconds=LEASE, release=True
    )
    await advance(storage, 3600)
    old_refund, _ = await started(storage, name="refund", correlation_id="req-1")
    await advance(storage, 600)
    new_order, _ = await started(storage, name="order", correlation_id="req-2")
    await advance(storage, 1)
    no_correlation, _ = await started(storage, name="order")

    def ids(records: list[SagaRecord]) -> list[uuid.UUID]:
        return [r.saga_id for r in records]

    assert ids(await storage.list_sagas()) == [old_order, old_refund, new_order, no_correlation]
    assert ids(await storage.list_sagas(limit=2)) == [old_order, old_refund]
    assert ids(await storage.list_sagas(limit=0)) == []
    assert ids(await storage.list_sagas(status=SagaStatus.RUNNING)) == [old_refund, new_order, no_correlation]
    assert ids(await storage.list_sagas(status=SagaStatus.COMPLETED)) == [old_order]
    assert ids(await storage.list_sagas(status=SagaStatus.PARKED)) == []
    assert ids(await storage.list_sagas(name="order")) == [old_order, new_order, no_correlation]
    assert ids(await storage.list_sagas(older_than=datetime.timedelta(minutes=5))) == [old_order, old_refund]
    assert ids(await storage.list_sagas(older_than=datetime.timedelta(minutes=30))) == [old_order]
    assert ids(await storage.list_sagas(correlation_id="req-1")) == [old_order, old_refund]
    assert ids(await storage.list_sagas(correlation_id="req-2")) == [new_order]
    assert ids(await storage.list_sagas(correlation_id="nope")) == []
    assert ids(
        await storage.list_sagas(
            status=SagaStatus.RUNNING, name="refund", older_than=datetime.timedelta(minutes=5), correlation_id="req-1"
        )
    ) == [old_refund]
    assert ids(await storage.list_sagas(name="order", correlation_id="req-1", status=SagaStatus.RUNNING)) == []
    [record] = await storage.list_sagas(correlation_id="req-2")
    assert record == await record_of(storage, new_order)


def ids(records: list[SagaRecord]) -> list[uuid.UUID]:
    return [r.saga_id for r in records]


async def test_list_sagas_filters_by_status_sets_recoverability_attempts_and_idleness(storage: SagaStorage) -> None:
    async def one(status: SagaStatus | None = None, *, release: bool = True) -> uuid.UUID:
        saga_id, lease = await started(storage)
        if status is not None or release:
            assert await storage.checkpoint(saga_id, lease, entry=None, status=status, lease_seconds=0, release=release)
        await advance(storage, 1)
        return saga_id

    idle = await one()
    await advance(storage, 600)
    leased = await one(release=False)
    compensating = await one(SagaStatus.COMPENSATING)
    done = await one(SagaStatus.COMPLETED)
    worn_out = await one()
    await storage.set_recovery_attempts(worn_out, 3)
    parked = await one()
    await storage.park_saga(parked, "by hand")
    pending = uuid.uuid4()
    await storage.create_saga(pending, "order", {})
    await advance(storage, 1)

    everything = [idle, leased, compensating, done, worn_out, parked, pending]
    assert ids(await storage.list_sagas()) == everything
    assert ids(await storage.list_sagas(status=[SagaStatus.COMPLETED, SagaStatus.PARKED])) == [done, parked]
    assert ids(await storage.list_sagas(status={SagaStatus.PENDING})) == [pending]
    assert ids(await storage.list_sagas(status=frozenset())) == []
    assert ids(await storage.list_sagas(recoverable=True)) == [idle, compensating, worn_out, pending]
    assert ids(await storage.list_sagas(recoverable=True, max_recovery_attempts=3)) == [idle, compensating, pending]
    assert ids(await storage.list_sagas(max_recovery_attempts=1)) == [i for i in everything if i != worn_out]
    assert ids(await storage.list_sagas(idle_for=datetime.timedelta(minutes=5))) == [idle]
    assert ids(await storage.list_sagas(idle_for=datetime.timedelta(0))) == everything
    assert ids(
        await storage.list_sagas(status=[SagaStatus.RUNNING, SagaStatus.COMPENSATING], recoverable=True, limit=1)
    ) == [idle]
    # The saga whose lease lapses becomes recoverable.
    await advance(storage, LEASE)
    assert ids(await storage.list_sagas(recoverable=True, status=SagaStatus.RUNNING)) == [idle, leased, worn_out]


async def test_list_sagas_pages_with_a_cursor_exactly(storage: SagaStorage) -> None:
    """``after=<the last record of a page>`` gives the next page: every saga once, in order, even when many
    were created in the same instant (ties are broken by id) and while new ones are added."""
    created: list[uuid.UUID] = []
    for batch in range(4):
        for _ in range(5):  # no clock move between these: equal (or nearly equal) creation times
            created.append((await started(storage, name="order" if batch % 2 else "refund"))[0])
        await advance(storage, 1)
    if kind(storage) != "memory":
        # Make the ties certain on SQL too: each batch of five shares one creation time.
        table = Base.metadata.tables["saga_executions"]
        assert isinstance(storage, SqlAlchemySagaStorage)
        async with storage.engine.begin() as conn:
            for batch in range(4):
                members = created[batch * 5: batch * 5 + 5]
                first = await conn.scalar(sa.select(table.c.created_at).where(table.c.id == members[0]))
                await conn.execute(sa.update(table).where(table.c.id.in_(members)).values(created_at=first))

    async def pages(**filters: typing.Any) -> list[list[uuid.UUID]]:
        found: list[list[uuid.UUID]] = []
        after: SagaRecord | None = None
        while page := await storage.list_sagas(after=after, limit=3, **filters):
            found.append(ids(page))
            after = page[-1]
        return found

    listed = await pages()
    assert [len(page) for page in listed] == [3, 3, 3, 3, 3, 3, 2]
    flat = [saga_id for page in listed for saga_id in page]
    assert flat == ids(await storage.list_sagas(limit=100))
    assert sorted(flat) == sorted(created)
    # Oldest first, and by id within one creation time.
    for batch in range(4):
        assert flat[batch * 5: batch * 5 + 5] == sorted(created[batch * 5: batch * 5 + 5], key=lambda i: i.int)
    orders = [saga_id for page in await pages(name="order") for saga_id in page]
    assert orders == [saga_id for saga_id in flat if saga_id in created[5:10] + created[15:20]]

    # A saga added between two pages is listed in its place (after the cursor, since it is newer).
    first = await storage.list_sagas(limit=3)
    late, _ = await started(storage)
    rest = [r.saga_id for r in await storage.list_sagas(after=first[-1], limit=100)]
    assert ids(first) + rest == [*flat, late]


async def test_park_saga_takes_a_saga_out_of_every_path(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage)

    await storage.park_saga(saga_id, "poison message: see ticket 42")

    record = await record_of(storage, saga_id)
    assert (record.status, record.error, record.owner, record.lease_expires_at) == (
        SagaStatus.PARKED, "poison message: see ticket 42", None, None,
    )
    assert not await storage.checkpoint(saga_id, lease, entry=act("x"), lease_seconds=LEASE)
    assert not await storage.renew_lease(saga_id, lease, LEASE)
    claim = await storage.claim_saga(saga_id, "runner-b", LEASE)
    assert claim is not None and claim.lease is None and not claim.busy
    assert await storage.claim_recoverable("r", LEASE, limit=10) == []
    assert await storage.get_sagas_for_recovery(10) == []
    assert [r.saga_id for r in await storage.list_sagas(status=SagaStatus.PARKED)] == [saga_id]


async def finished(storage: SagaStorage, status: SagaStatus) -> uuid.UUID:
    saga_id, lease = await started(storage)
    assert await storage.checkpoint(saga_id, lease, entry=act("one"), lease_seconds=LEASE)
    assert await storage.checkpoint(
        saga_id, lease, entry=act("two"), status=status, lease_seconds=LEASE, release=True
    )
    return saga_id


async def log_rows(storage: SagaStorage, saga_ids: list[uuid.UUID]) -> int | None:
    """How many saga_log rows the SQL storage holds for these sagas (memory keeps a saga's log in its record)."""
    if not isinstance(storage, SqlAlchemySagaStorage):
        return None
    async with storage.engine.connect() as conn:
        count = await conn.scalar(
            sa.select(sa.func.count()).select_from(saga_log).where(saga_log.c.saga_id.in_(saga_ids))
        )
    return int(count or 0)


async def test_purge_sagas_deletes_old_finished_sagas_with_their_history(storage: SagaStorage) -> None:
    old_completed = await finished(storage, SagaStatus.COMPLETED)
    await advance(storage, 1)  # sagas are purged (and listed) oldest first
    old_failed = await finished(storage, SagaStatus.FAILED)
    await advance(storage, 1)
    old_running, _ = await started(storage)
    await advance(storage, 1)
    old_parked, _ = await started(storage)
    await storage.park_saga(old_parked, "ticket 42")
    await advance(storage, 3600)
    new_completed = await finished(storage, SagaStatus.COMPLETED)
    hour = datetime.timedelta(hours=1)

    assert await storage.purge_sagas(older_than=2 * hour) == 0
    assert await storage.purge_sagas(older_than=hour / 2, limit=1) == 1  # oldest first
    assert await storage.get_saga(old_completed) is None
    assert await storage.get_saga(old_failed) is not None
    assert await storage.purge_sagas(older_than=hour / 2, limit=0) == 0
    assert await storage.purge_sagas(older_than=hour / 2) == 1
    # Unfinished sagas and parked ones (unless asked for) stay, and so do young ones.
    assert await storage.purge_sagas(older_than=hour / 2) == 0
    assert [r.saga_id for r in await storage.list_sagas()] == [old_running, old_parked, new_completed]
    assert await storage.purge_sagas(older_than=hour / 2, status=SagaStatus.PARKED) == 1
    with pytest.raises(ValueError, match="finished sagas"):
        await storage.purge_sagas(older_than=hour / 2, status=SagaStatus.RUNNING)
    with pytest.raises(ValueError, match="zero or more"):
        await storage.purge_sagas(older_than=-hour)

    assert [r.saga_id for r in await storage.list_sagas()] == [old_running, new_completed]
    history = await storage.get_step_history(new_completed)
    assert steps(history) == [("one", "act", "completed"), ("two", "act", "completed")]
    for gone in (old_completed, old_failed, old_parked):
        assert await storage.get_history(gone) is None
    if isinstance(storage, SqlAlchemySagaStorage):
        assert await log_rows(storage, [old_completed, old_failed, old_parked]) == 0
        assert await log_rows(storage, [new_completed]) == 2


async def test_purge_sagas_skips_a_saga_another_transaction_holds(storage: SagaStorage) -> None:
    """On PostgreSQL and MariaDB a purge neither waits for nor deletes a saga row another transaction has locked."""
    sql = sql_only(storage)
    if kind(sql) == "sqlite":
        pytest.skip("SQLite has no row locks")
    held = await finished(sql, SagaStatus.COMPLETED)
    free = await finished(sql, SagaStatus.COMPLETED)
    await advance(sql, 3600)
    async with sql.engine.connect() as other:
        await lock_row(other, held)
        deleted = await asyncio.wait_for(sql.purge_sagas(older_than=datetime.timedelta(minutes=30)), 30)
        await other.rollback()
    assert deleted == 1
    assert await sql.get_saga(free) is None
    assert await sql.get_saga(held) is not None
    assert await log_rows(sql, [held]) == 2


async def until_waiting_for_a_lock(storage: SqlAlchemySagaStorage, call: asyncio.Future[typing.Any]) -> None:
    """Return once the server says a statement of ``storage``'s database waits for a row lock (``call`` is
    running it; on MariaDB: is updating a saga, the only row of which another transaction holds): asked over and
    over, on a connection of its own outside any transaction, never timed."""
    url = storage.engine.url
    if kind(storage) == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database="postgres")
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = $1"
        try:
            while not await conn.fetchval(query, url.database):
                assert not call.done()
        finally:
            await conn.close()
        return
    import asyncmy

    # (Not information_schema.innodb_trx: MariaDB refreshes it only when it was not read for 0.1 s.)
    query = (
        "SELECT count(*) FROM information_schema.processlist WHERE db = %s AND state = 'Updating'"
        " AND info LIKE 'UPDATE saga_executions%%'"
    )
    conn = await asyncmy.connect(host=url.host, port=url.port or 3306, user=url.username, autocommit=True)
    try:
        async with conn.cursor() as cursor:
            while True:
                await cursor.execute(query, (url.database,))
                if (await cursor.fetchone())[0]:
                    return
                assert not call.done()
    finally:
        await conn.ensure_closed()


async def test_a_claim_reads_the_history_its_former_holder_committed_while_the_claim_waited(
    storage: SagaStorage,
) -> None:
    """The former holder (its lease expired) is writing a checkpoint that releases the saga when a claim comes:
    the claim waits for the saga's row and is granted once that checkpoint committed, and the history it hands
    out has the checkpoint's entry (read after the claim took the row, not in a snapshot from before)."""
    sql = sql_only(storage)
    if kind(sql) == "sqlite":
        pytest.skip("SQLite has one writer at a time: the claim cannot start while the checkpoint is in flight")
    saga_id, lease = await started(sql)
    assert await sql.checkpoint(saga_id, lease, entry=act("one"), lease_seconds=LEASE)
    await advance(sql, LEASE + 1)
    table = Base.metadata.tables["saga_executions"]
    async with sql.engine.connect() as holder:
        # The holder's last checkpoint (a failed compensation, compensation_failed, lease released), in flight.
        await holder.execute(
            sa.update(table).where(table.c.id == saga_id).values(
                status=SagaStatus.COMPENSATION_FAILED.value, owner=None, lease_expires_at=None,
                version=table.c.version + 1,
            )
        )
        await holder.execute(saga_log.insert().values(
            saga_id=saga_id, step_name="one", action="compensate", status="failed",
            created_at=datetime.datetime.now(UTC),
        ))
        claim = asyncio.ensure_future(sql.claim_saga(saga_id, "runner-b", LEASE))
        await until_waiting_for_a_lock(sql, claim)
        await holder.commit()
    claimed = await claim
    assert claimed is not None and claimed.lease == Lease("runner-b", 2)
    assert claimed.record.status == SagaStatus.COMPENSATION_FAILED
    assert steps(claimed.history) == [("one", "act", "completed"), ("one", "compensate", "failed")]


async def free_sagas(storage: SagaStorage, count: int) -> list[tuple[uuid.UUID, int]]:
    """``count`` sagas with free leases, the n-th with n % 4 steps done (a response each): (id, steps)."""
    made = []
    for n in range(count):
        saga_id, lease = await started(storage, context={"n": n})
        for step in range(n % 4):
            entry = act(f"s{step}", {"step": step}, details=f"d{step}" if step % 2 else None)
            assert await storage.checkpoint(saga_id, lease, entry=entry, lease_seconds=LEASE)
        assert await storage.release_lease(saga_id, lease)
        made.append((saga_id, n % 4))
    return made


async def test_claims_made_at_once_each_get_their_saga_and_its_history(storage: SagaStorage) -> None:
    """Many one-saga claims at the same time (on PostgreSQL sent as one statement): each is granted its own saga
    with its whole history, exactly as `get_history` reads it; an unknown id gets None, a leased saga is busy, a
    finished one is handed out without a lease."""
    free = await free_sagas(storage, 12)
    leased, _ = await started(storage)
    done = await finished(storage, SagaStatus.COMPLETED)
    wanted = [saga_id for saga_id, _ in free] + [leased, done, uuid.uuid4()]

    claims = await all_at_once([functools.partial(storage.claim_saga, s, "runner-b", LEASE) for s in wanted])

    for (saga_id, done_steps), claim in zip(free, claims, strict=False):
        assert claim is not None and claim.lease == Lease("runner-b", 2) and not claim.busy
        assert claim.record.saga_id == saga_id and claim.record.owner == "runner-b"
        assert len(claim.history) == done_steps
        assert claim.history == await storage.get_history(saga_id)
    busy, final, unknown = claims[-3:]
    assert busy is not None and busy.busy and busy.lease is None
    assert final is not None and not final.busy and final.lease is None
    assert final.history == await storage.get_history(done)
    assert unknown is None


async def test_one_saga_claimed_twice_at_once_by_one_owner_is_granted_in_turn(storage: SagaStorage) -> None:
    """Two claims of one saga at the same moment by one owner: one after the other (each bumps the epoch, so
    the later one fences the earlier), never both with the same lease."""
    saga_id, lease = await started(storage)
    assert await storage.release_lease(saga_id, lease)

    claims = await all_at_once([functools.partial(storage.claim_saga, saga_id, "runner-b", LEASE)] * 2)

    assert sorted(c.lease.epoch for c in claims if c is not None and c.lease is not None) == [2, 3]


async def test_claims_at_once_are_not_held_up_by_a_saga_another_transaction_holds(storage: SagaStorage) -> None:
    """A claim of a saga whose row another transaction holds waits for it (as a lone claim does), and the claims
    made together with it are granted meanwhile (on PostgreSQL they shared its statement, which skips held rows)."""
    sql = sql_only(storage)
    if kind(sql) == "sqlite":
        pytest.skip("SQLite has no row locks")
    (held, _), (free, _) = await free_sagas(sql, 2)
    async with sql.engine.connect() as other:
        await lock_row(other, held)
        waiting = asyncio.ensure_future(sql.claim_saga(held, "runner-b", LEASE))
        meanwhile = asyncio.ensure_future(sql.claim_saga(free, "runner-b", LEASE))
        claimed = await asyncio.wait_for(meanwhile, 30)
        assert claimed is not None and claimed.lease == Lease("runner-b", 2)
        await until_waiting_for_a_lock(sql, waiting)
        await other.rollback()
    late = await asyncio.wait_for(waiting, 30)
    assert late is not None and late.lease == Lease("runner-b", 2)


@pytest.mark.parametrize("claim_kind", ["claim_saga", "claim_recoverable"])
async def test_a_claim_hands_out_the_entry_its_former_holder_committed_after_the_claim_began(
    storage: SagaStorage, monkeypatch: pytest.MonkeyPatch, claim_kind: str
) -> None:
    """PostgreSQL: a claim statement reads the histories in the snapshot it started with. Here the former
    holder (its lease expired) commits its last checkpoint, releasing the saga, after the claim's statement
    began and before it locks the saga's row (held at a gate, an advisory lock, in between): the claim is still
    granted, and its history must have that checkpoint's entry (the row version it locked is not the one its
    snapshot holds, so the history is read again)."""
    from cqrs.saga.storage.sqlalchemy import _claim_statements

    sql = sql_only(storage)
    if kind(sql) != "postgresql":
        pytest.skip("snapshots of one statement are PostgreSQL's (SQLite and MariaDB read after locking)")
    gate = sa.cast(sa.func.pg_advisory_xact_lock_shared(sa.literal_column("4242")), sa.Text) == sa.literal_column("''")
    monkeypatch.setattr(_claim_statements, "RESUMABLE_CLAUSE", sa.and_(_claim_statements.RESUMABLE_CLAUSE, gate))
    saga_id, lease = await started(sql)
    assert await sql.checkpoint(saga_id, lease, entry=act("one"), lease_seconds=LEASE)
    await advance(sql, LEASE + 1)
    async with sql.engine.connect() as gatekeeper:
        await gatekeeper.exec_driver_sql("SELECT pg_advisory_lock(4242)")
        if claim_kind == "claim_saga":
            claim = asyncio.ensure_future(sql.claim_saga(saga_id, "runner-b", LEASE))
        else:
            claim = asyncio.ensure_future(sql.claim_recoverable("runner-b", LEASE, limit=5))
        await until_waiting_for_a_lock(sql, claim)  # its snapshot is taken; it waits at the gate
        assert await sql.checkpoint(saga_id, lease, entry=act("two"), lease_seconds=LEASE, release=True)
        await gatekeeper.exec_driver_sql("SELECT pg_advisory_unlock(4242)")
    claimed = await asyncio.wait_for(claim, 30)
    if isinstance(claimed, list):
        [claimed] = claimed
    assert claimed is not None and claimed.lease == Lease("runner-b", 2)
    assert steps(claimed.history) == [("one", "act", "completed"), ("two", "act", "completed")]


async def lock_row(conn: typing.Any, saga_id: uuid.UUID) -> None:
    """Lock a saga's row in ``conn``'s transaction (until it ends)."""
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql("SELECT 1 FROM saga_executions WHERE id = $1 FOR UPDATE", (saga_id,))
    else:
        await conn.exec_driver_sql("SELECT 1 FROM saga_executions WHERE id = %s FOR UPDATE", (saga_id.hex,))


async def test_reset_saga_resumes_forward_or_compensation_with_fresh_attempts(storage: SagaStorage) -> None:
    forward, lease = await started(storage)
    assert await storage.checkpoint(forward, lease, entry=act("one"), lease_seconds=LEASE)
    backward, lease_b = await started(storage)
    assert await storage.checkpoint(backward, lease_b, entry=act("one"), lease_seconds=LEASE)
    assert await storage.checkpoint(
        backward, lease_b, entry=StepEntry("two", "act", SagaStepStatus.FAILED, "boom"),
        status=SagaStatus.COMPENSATING, error="boom", lease_seconds=LEASE,
    )
    compensated, lease_c = await started(storage)
    assert await storage.checkpoint(compensated, lease_c, entry=act("one"), lease_seconds=LEASE)
    assert await storage.checkpoint(
        compensated, lease_c, entry=StepEntry("one", "compensate", SagaStepStatus.FAILED, "still down"),
        status=SagaStatus.COMPENSATION_FAILED, lease_seconds=LEASE, release=True,
    )
    for saga_id in (forward, backward, compensated):
        await storage.set_recovery_attempts(saga_id, 5)
        await storage.park_saga(saga_id, "too many attempts")

    for saga_id in (forward, backward, compensated):
        await storage.reset_saga(saga_id)

    statuses = {s: await record_of(storage, s) for s in (forward, backward, compensated)}
    assert statuses[forward].status == SagaStatus.RUNNING
    assert statuses[backward].status == SagaStatus.COMPENSATING
    assert statuses[compensated].status == SagaStatus.COMPENSATING
    for record in statuses.values():
        assert (record.recovery_attempts, record.owner, record.lease_expires_at) == (0, None, None)
    # Reset sagas are claimable at once.
    claimed = await storage.claim_recoverable("r", LEASE, limit=10)
    assert {c.record.saga_id for c in claimed} == {forward, backward, compensated}


async def test_amend_saga_writes_what_it_is_given_in_one_commit(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage, context={"n": 0})
    before = await record_of(storage, saga_id)
    await advance(storage, 5)

    fix = StepEntry("reserve", "compensate", SagaStepStatus.COMPENSATED, "by an operator", {"ticket": 7})
    assert await storage.amend_saga(
        saga_id, context={"n": 1}, status=SagaStatus.COMPENSATING, error="by hand", entry=fix,
        recovery_attempts=2, add_recovery_attempts=1,
    )

    record = await record_of(storage, saga_id)
    assert (record.status, record.context, record.error, record.version, record.recovery_attempts) == (
        SagaStatus.COMPENSATING, {"n": 1}, "by hand", 2, 3,
    )
    # Not a lease write: the lease is the holder's still.
    assert (record.owner, record.lease_epoch) == (before.owner, before.lease_epoch)
    assert record.lease_expires_at == moved(storage, before, 5).lease_expires_at
    assert aware(record.updated_at) > aware(before.updated_at) - datetime.timedelta(seconds=5)
    [entry] = await storage.get_history(saga_id) or []
    assert (entry.step_name, entry.action, entry.status, entry.details, entry.response) == (
        "reserve", "compensate", SagaStepStatus.COMPENSATED, "by an operator", {"ticket": 7},
    )
    assert await storage.renew_lease(saga_id, lease, LEASE)

    # Without a context or status the version stays; attempts add up; an entry alone is appended.
    assert await storage.amend_saga(saga_id, add_recovery_attempts=2)
    assert await storage.amend_saga(saga_id, entry=act("noted"))
    record = await record_of(storage, saga_id)
    assert (record.version, record.recovery_attempts, record.context) == (2, 5, {"n": 1})
    assert steps(await storage.get_history(saga_id) or []) == [
        ("reserve", "compensate", "compensated"), ("noted", "act", "completed"),
    ]
    assert await storage.amend_saga(saga_id, recovery_attempts=0)
    assert (await record_of(storage, saga_id)).recovery_attempts == 0

    unknown = uuid.uuid4()
    assert not await storage.amend_saga(unknown, context={"x": 1}, entry=act("lost"))
    assert not await storage.amend_saga(unknown)
    assert await storage.get_history(unknown) is None
    assert await log_rows(storage, [unknown]) in (None, 0)


async def test_amend_saga_with_a_condition_changes_only_a_saga_that_meets_it(storage: SagaStorage) -> None:
    saga_id, _ = await started(storage)  # version 1, leased
    before = await record_of(storage, saga_id)

    # Nothing is written, the entry included, when the condition does not hold.
    assert not await storage.amend_saga(saga_id, context={"a": 1}, expected_version=2, entry=act("no"))
    assert not await storage.amend_saga(saga_id, status=SagaStatus.PARKED, unleased=True, entry=act("no"))
    assert await record_of(storage, saga_id) == before
    assert await storage.get_history(saga_id) == []

    assert await storage.amend_saga(saga_id, context={"a": 1}, expected_version=1)
    assert not await storage.amend_saga(saga_id, context={"a": 2}, expected_version=1)
    assert (await record_of(storage, saga_id)).context == {"a": 1}

    await advance(storage, LEASE + 1)  # the lease has lapsed: the saga is unleased now
    assert await storage.amend_saga(
        saga_id, status=SagaStatus.PARKED, error="stuck", unleased=True, expected_version=2, entry=act("parked")
    )
    record = await record_of(storage, saga_id)
    assert (record.status, record.error, record.version) == (SagaStatus.PARKED, "stuck", 3)
    assert steps(await storage.get_history(saga_id) or []) == [("parked", "act", "completed")]
    # A released lease is no lease either.
    other, other_lease = await started(storage)
    assert not await storage.amend_saga(other, error="x", unleased=True)
    assert await storage.release_lease(other, other_lease)
    assert await storage.amend_saga(other, error="x", unleased=True)


async def test_concurrent_amendments_at_one_version_let_exactly_one_through(storage: SagaStorage) -> None:
    saga_id, _ = await started(storage, context={"writer": None})
    others = [another(storage) for _ in range(5)]

    def amend(store: SagaStorage, writer: int) -> typing.Callable[[], typing.Awaitable[bool]]:
        return lambda: store.amend_saga(
            saga_id, context={"writer": writer}, expected_version=1, entry=act(f"writer-{writer}")
        )

    try:
        results = await all_at_once([amend(s, i) for i, s in enumerate([storage, *others])])
    finally:
        await close_others(storage, others)
    assert results.count(True) == 1
    winner = results.index(True)
    record = await record_of(storage, saga_id)
    assert (record.context, record.version) == ({"writer": winner}, 2)
    assert steps(await storage.get_history(saga_id) or []) == [(f"writer-{winner}", "act", "completed")]


# -- copies and JSON ------------------------------------------------------------------------------------------


async def test_what_a_storage_hands_out_and_takes_in_are_copies(storage: SagaStorage) -> None:
    # The engine's own writes (start_saga, checkpoint) hand their JSON over and never touch it again
    # (see the protocol); the operator and python-cqrs writes take copies.
    context: JsonDict = {"items": ["a", "mutated after start"], "nested": {"n": 1}}
    response: JsonDict = {"lines": [{"sku": "a"}]}
    new = new_saga(context={"items": ["a"], "nested": {"n": 1}})
    lease = await storage.start_saga(new, "runner-a", LEASE)
    assert lease is not None
    assert await storage.checkpoint(
        new.saga_id, lease, entry=act("one", response), context=context, lease_seconds=LEASE
    )
    created = uuid.uuid4()
    create_context: JsonDict = {"x": [1]}
    await storage.create_saga(created, "order", create_context)
    create_context["x"].append(2)
    update_context: JsonDict = {"y": [1]}
    await storage.update_context(created, update_context)
    update_context["y"].append(2)

    stored_context = {"items": ["a", "mutated after start"], "nested": {"n": 1}}
    stored_response = {"lines": [{"sku": "a"}]}

    record = await record_of(storage, new.saga_id)
    record.context["items"].clear()
    _, loaded, _ = await storage.load_saga_state(new.saga_id)
    loaded["nested"]["n"] = 3
    [entry] = await storage.get_step_history(new.saga_id)
    assert entry.response is not None
    entry.response["lines"].clear()
    [listed] = await storage.list_sagas(name="order", status=SagaStatus.RUNNING)
    listed.context["nested"].clear()
    claim = await storage.claim_saga(new.saga_id, "runner-a", LEASE)
    assert claim is not None and claim.history[0].response is not None
    claim.record.context["items"].append("via claim")
    claim.history[0].response["lines"].append("via claim")

    assert (await record_of(storage, new.saga_id)).context == stored_context
    assert (await storage.load_saga_state(new.saga_id))[1] == stored_context
    assert [e.response for e in await storage.get_step_history(new.saga_id)] == [stored_response]
    assert (await storage.load_saga_state(created))[1] == {"y": [1]}
    claim = await storage.claim_saga(new.saga_id, "runner-a", LEASE)
    assert claim is not None
    assert claim.record.context == stored_context and claim.history[0].response == stored_response


ODD_JSON: JsonDict = {
    "unicode": "Grüße, 東京, عربى, עברית, 🚀🧾, e\u0301, \u2028, tab\tquote\" back\\slash",
    "ключ 🔑": {"日本": ["ü", "ß", "😀"]},
    "big": 2**63 + 1,
    "bigger": -(2**70),
    "huge": 10**30,
    "max_int64": 2**63 - 1,
    "float": 0.1,
    "tiny": 1.5e-300,
    "fraction": -12345.6789,
    "bools": [True, False, None],
    "empty": {"list": [], "dict": {}, "string": ""},
    "deep": {"a": {"b": {"c": {"d": {"e": [[1, [2, [3, {"f": "g"}]]]]}}}}},
    "numeric_keys": {"1": "one", "10": "ten", "2": "two"},
}


async def test_contexts_and_responses_round_trip_through_json(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage, context=ODD_JSON)
    assert await storage.load_saga_state(saga_id) == (SagaStatus.RUNNING, ODD_JSON, 1)

    changed = {**ODD_JSON, "step": "two"}
    assert await storage.checkpoint(saga_id, lease, entry=act("one", ODD_JSON), context=changed, lease_seconds=LEASE)

    record = await record_of(storage, saga_id)
    assert record.context == changed
    assert type(record.context["big"]) is int and type(record.context["huge"]) is int
    assert type(record.context["float"]) is float
    assert [e.response for e in await storage.get_step_history(saga_id)] == [ODD_JSON]
    other = uuid.uuid4()
    await storage.create_saga(other, "order", ODD_JSON)
    assert (await storage.load_saga_state(other))[1] == ODD_JSON
    await storage.update_context(other, changed)
    assert (await storage.load_saga_state(other))[1] == changed
    [listed] = await storage.list_sagas(status=SagaStatus.PENDING)
    assert listed.context == changed


async def test_integral_floats_in_exponent_form_come_back_with_their_value(storage: SagaStorage) -> None:
    floats = {"big": 1e16, "huge": 1.5e300, "negative": -2e20}
    saga_id, _ = await started(storage, context=floats)

    _, context, _ = await storage.load_saga_state(saga_id)

    assert {key: float(value) for key, value in context.items()} == floats
    # PostgreSQL's JSONB keeps numbers as `numeric` and writes these without an exponent or a
    # fraction, so they are read back as ints of the same value (a float field of a context
    # turns them back into floats). The other storages keep them floats.
    expected = int if kind(storage) == "postgresql" else float
    assert {type(value) for value in context.values()} == {expected}


# -- close ---------------------------------------------------------------------------------------------------


async def test_close_is_idempotent_and_leaves_no_connection(storage: SagaStorage) -> None:
    saga_id, lease = await started(storage)
    # Several connections in the pool at once.
    await asyncio.gather(*(storage.get_saga(saga_id) for _ in range(4)), storage.renew_lease(saga_id, lease, LEASE))
    if kind(storage) in ("postgresql", "mysql"):
        assert await server_connections(storage) >= 1

    await storage.close()
    await storage.close()

    if isinstance(storage, SqlAlchemySagaStorage):
        pool = storage.engine.pool
        assert (pool.checkedout(), pool.checkedin()) == (0, 0)
    if kind(storage) in ("postgresql", "mysql"):
        assert await server_connections(storage) == 0


async def server_connections(storage: SagaStorage) -> int:
    """How many connections the server has to the storage's database (PostgreSQL, MariaDB)."""
    if kind(storage) == "postgresql":
        return await pg_backends(storage)
    import asyncmy

    assert isinstance(storage, SqlAlchemySagaStorage)
    url = storage.engine.url
    conn = await asyncmy.connect(host=url.host, port=url.port or 3306, user=url.username)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute("SELECT count(*) FROM information_schema.processlist WHERE db = %s", (url.database,))
            (count,) = await cursor.fetchone()
    finally:
        await conn.ensure_closed()
    return int(count)


async def pg_backends(storage: SagaStorage) -> int:
    """How many server processes are connected to the storage's database (asked from another database)."""
    import asyncpg

    assert isinstance(storage, SqlAlchemySagaStorage)
    url = storage.engine.url
    conn = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database="postgres")
    try:
        count = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", url.database)
    finally:
        await conn.close()
    return int(count)


async def test_a_closed_storage_made_from_a_sessionmaker_leaves_the_engine_to_its_owner(
    storage_url: str,
) -> None:
    if storage_url == "memory://":
        pytest.skip("a property of the SQL storage")
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    engine = create_async_engine(storage_url)
    try:
        store = SqlAlchemySagaStorage(async_sessionmaker(engine))
        await store.create_tables()
        saga_id, _ = await started(store)
        await store.close()
        await store.close()
        # The engine still works: it belongs to whoever made it.
        assert await SqlAlchemySagaStorage(engine).get_saga(saga_id) is not None
    finally:
        await engine.dispose()


# -- the schema (SQL) --------------------------------------------------------------------------------------------


async def test_sqlite_connections_wait_30_seconds_for_the_lock_and_use_wal_and_foreign_keys(
    storage: SagaStorage,
) -> None:
    sql = sql_only(storage)
    if kind(sql) != "sqlite":
        pytest.skip("SQLite's connection settings")
    async with sql.engine.connect() as conn:
        pragmas = {
            name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("busy_timeout", "journal_mode", "foreign_keys")
        }
    assert pragmas == {"busy_timeout": 30000, "journal_mode": "wal", "foreign_keys": 1}


async def test_the_schema_uses_jsonb_on_postgresql_and_plain_strings_for_statuses(storage: SagaStorage) -> None:
    """JSONB on PostgreSQL; JSON elsewhere (MariaDB keeps it as LONGTEXT checked by JSON_VALID); timestamps with
    a time zone on PostgreSQL, microseconds on MariaDB."""
    sql = sql_only(storage)

    def columns(conn: sa.Connection) -> dict[str, dict[str, str]]:
        inspector = sa.inspect(conn)
        return {
            table: {c["name"]: str(c["type"]) for c in inspector.get_columns(table)}
            for table in ("saga_executions", "saga_log")
        }

    async with sql.engine.connect() as conn:
        types = await conn.run_sync(columns)
        if kind(sql) == "postgresql":
            enums = await conn.scalar(sa.text("SELECT count(*) FROM pg_type WHERE typtype = 'e'"))
            assert enums == 0
        if kind(sql) == "mysql":
            precisions = set((await conn.exec_driver_sql(
                "SELECT DATETIME_PRECISION FROM information_schema.columns WHERE table_schema = DATABASE()"
                " AND column_name IN ('created_at', 'updated_at', 'lease_expires_at')"
            )).scalars())
            assert precisions == {6}  # microseconds
    if kind(sql) == "postgresql":
        assert types["saga_executions"]["context"] == "JSONB"
        assert types["saga_log"]["response"] == "JSONB"
    elif kind(sql) == "mysql":
        json_type = "LONGTEXT" if sql.engine.dialect.is_mariadb else "JSON"  # type: ignore[attr-defined]
        assert types["saga_executions"]["context"] == json_type
        assert types["saga_log"]["response"] == json_type
        assert types["saga_executions"]["created_at"] == "DATETIME"
        assert types["saga_executions"]["id"] == "CHAR(32)"
    else:
        assert types["saga_executions"]["context"] == "JSON"
        assert types["saga_log"]["response"] == "JSON"
    assert types["saga_executions"]["status"] == "VARCHAR(32)"
    assert types["saga_log"]["status"] == "VARCHAR(32)"
    assert types["saga_log"]["action"] == "VARCHAR(16)"

    # Statuses are the enum values; a missing response is SQL NULL, whichever method wrote the row.
    saga_id, lease = await started(sql)
    assert await sql.checkpoint(saga_id, lease, entry=act("none"), lease_seconds=LEASE)
    assert await sql.checkpoint(
        saga_id, lease, entry=act("some", {"a": 1}), status=SagaStatus.COMPLETED, lease_seconds=LEASE, release=True
    )
    await sql.log_step(saga_id, "logged", "compensate", SagaStepStatus.COMPENSATED)
    async with sql.engine.connect() as conn:
        query = "SELECT step_name, status, response IS NULL FROM saga_log ORDER BY seq"
        rows = (await conn.exec_driver_sql(query)).all()
        saga_status = await conn.scalar(sa.text("SELECT status FROM saga_executions"))
    assert [tuple(r) for r in rows] == [
        ("none", "completed", True), ("some", "completed", False), ("logged", "compensated", True),
    ]
    assert saga_status == "completed"
    # Creating the tables again is harmless.
    await sql.create_tables()
    assert (await record_of(sql, saga_id)).status == SagaStatus.COMPLETED


EXPECTED_INDEXES = {
    "saga_executions": {
        "ix_saga_executions_status_created": ["status", "created_at"],
        "ix_saga_executions_name_created": ["name", "created_at"],
        "ix_saga_executions_correlation_id": ["correlation_id"],
    },
    "saga_log": {"ix_saga_log_saga_id_seq": ["saga_id", "seq"]},
}


async def test_every_lookup_has_an_index(storage: SagaStorage) -> None:
    sql = sql_only(storage)

    def indexes(conn: sa.Connection) -> dict[str, dict[str, list[str | None]]]:
        inspector = sa.inspect(conn)
        return {
            table: {str(i["name"]): list(i["column_names"]) for i in inspector.get_indexes(table)}
            for table in EXPECTED_INDEXES
        }

    async with sql.engine.connect() as conn:
        found = await conn.run_sync(indexes)
    assert found == EXPECTED_INDEXES
    # The metadata Alembic autogenerates from says the same.
    for table, expected in EXPECTED_INDEXES.items():
        assert {str(i.name): [c.name for c in i.columns] for i in Base.metadata.tables[table].indexes} == expected


def test_a_step_checkpoint_writes_no_indexed_column() -> None:
    """A checkpoint that keeps the status must stay a HOT update on PostgreSQL: no index may hold what it sets."""
    update = Statements("postgresql").checkpoint_update(context=True, status=False, error=False, release=False)
    written = {str(getattr(key, "name", key)) for key in update._values}
    assert {"context", "version", "lease_expires_at", "updated_at"} <= written
    indexed = {column.name for index in Base.metadata.tables["saga_executions"].indexes for column in index.columns}
    assert not written & indexed


async def test_postgresql_makes_the_checkpoints_before_the_last_hot_updates(storage: SagaStorage) -> None:
    """docs/storage.md: steps 1 and 2 of a 3-step saga are HOT updates (no index written); the last one, which
    changes the status, is not. Counted by PostgreSQL itself."""
    sql = sql_only(storage)
    if kind(sql) != "postgresql":
        pytest.skip("HOT updates are PostgreSQL's")
    if sql.group_commit:
        pytest.skip("the writer holds its connection: tests/test_group_commit.py counts its HOT updates")
    import asyncpg

    async def updates() -> tuple[int, int]:
        await asyncio.sleep(0)  # a connection lent to the writes goes back to the pool
        async with sql.engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.exec_driver_sql("SELECT pg_stat_force_next_flush()")
        url = sql.engine.url
        reader = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database=url.database)
        try:
            row = await reader.fetchrow(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'saga_executions'"
            )
        finally:
            await reader.close()
        return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])

    saga_id, lease = await started(sql)
    before = await updates()
    assert await sql.checkpoint(saga_id, lease, entry=act("one"), context={"a": 1}, lease_seconds=LEASE)
    assert await sql.checkpoint(saga_id, lease, entry=act("two"), context={"a": 2}, lease_seconds=LEASE)
    assert await sql.checkpoint(
        saga_id, lease, entry=act("three"), context={"a": 3}, status=SagaStatus.COMPLETED,
        lease_seconds=LEASE, release=True,
    )
    after = await updates()
    assert (after[0] - before[0], after[1] - before[1]) == (3, 2)


def test_the_step_log_has_no_foreign_key() -> None:
    """docs/storage.md: PostgreSQL would check a key with a query per log row, on every step's commit;
    integrity comes from the writes (a log row is inserted only by a statement that matched its saga)."""
    assert Base.metadata.tables["saga_log"].foreign_keys == set()


async def test_postgresql_plans_the_engine_lookups_on_indexes(storage: SagaStorage) -> None:
    sql = sql_only(storage)
    if kind(sql) != "postgresql":
        pytest.skip("query plans are checked on PostgreSQL")
    for _ in range(3):
        saga_id, lease = await started(sql, name="order", correlation_id=f"c-{uuid.uuid4()}")
        assert await sql.checkpoint(saga_id, lease, entry=act("one"), lease_seconds=LEASE)
    # A table as it looks in production: mostly finished sagas, a few in flight, statistics up to date.
    async with sql.engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO saga_executions (id, name, status, context, version, definition_version, correlation_id,"
            " lease_epoch, recovery_attempts, created_at, updated_at)"
            " SELECT gen_random_uuid(), 'order', 'completed', '{}'::jsonb, 4, 1, 'c-' || g, 1, 0,"
            " now() - make_interval(secs => g), now() FROM generate_series(1, 5000) AS g"
        )
        await conn.exec_driver_sql(
            "INSERT INTO saga_log (saga_id, step_name, action, status, created_at)"
            " SELECT id, 'step-' || g, 'act', 'completed', now() FROM saga_executions, generate_series(1, 3) AS g"
        )
    async with sql.engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.exec_driver_sql("ANALYZE")
    statements = sql._sql
    claim_statements = ClaimStatements(statements)
    claim_params = {"b_id": saga_id, "b_owner": "r", "b_lease_seconds": 1.0}
    running = frozenset({SagaStatus.RUNNING})
    listing = {"name": False, "older": False, "correlation": False, "recoverable": False, "max_attempts": False,
               "idle": False, "after": False}
    cases: list[tuple[str, typing.Any, dict[str, typing.Any]]] = [
        (
            "ix_saga_executions_status_created",
            statements.list_sagas(None, **{**listing, "recoverable": True, "max_attempts": True}),
            {"b_max_attempts": 5, "b_limit": 10},
        ),
        (
            "ix_saga_executions_status_created",
            claim_statements.claim_many(False, False),
            {"b_owner": "r", "b_lease_seconds": 1.0, "b_limit": 10},
        ),
        (
            "ix_saga_executions_status_created",
            claim_statements.claim_many(True, True),
            {"b_owner": "r", "b_lease_seconds": 1.0, "b_limit": 10, "b_names": ["order"], "b_max_attempts": 3},
        ),
        (
            "ix_saga_executions_status_created",
            statements.list_sagas(running, **listing),
            {"b_limit": 10},
        ),
        (
            "ix_saga_executions_status_created",
            statements.list_sagas(running, **{**listing, "after": True}),
            {"b_limit": 10, "b_after_created": datetime.datetime.now(UTC), "b_after_id": saga_id},
        ),
        (
            "ix_saga_executions_name_created",
            statements.list_sagas(None, **{**listing, "name": True}),
            {"b_name": "order", "b_limit": 10},
        ),
        (
            "ix_saga_executions_correlation_id",
            statements.list_sagas(None, **{**listing, "correlation": True}),
            {"b_correlation_id": "c-1", "b_limit": 10},
        ),
        (
            "ix_saga_executions_status_created",
            statements.purge(purge_filter(datetime.timedelta(0), None))[0],
            {"b_older": 60.0, "b_limit": 10},
        ),
        ("ix_saga_log_saga_id_seq", statements.history, {"b_id": saga_id}),
        ("saga_executions_pkey", statements.get, {"b_id": saga_id}),
        ("saga_executions_pkey", statements.claim, {"b_id": saga_id, "b_owner": "r", "b_lease_seconds": 1.0}),
        ("saga_executions_pkey", claim_statements.claim_one(), claim_params),
        ("ix_saga_log_saga_id_seq", claim_statements.claim_one(), claim_params),  # the history read with the claim
    ]
    async with sql.engine.connect() as conn:
        await conn.exec_driver_sql("SET enable_seqscan = off")
        for index, statement, params in cases:
            # EXPLAIN (not ANALYZE) plans the statement without running it; the SQL and its parameters
            # as the fast path sends them.
            prepared = Prepared.compile(statement, sql.engine.dialect, statements.json_params)
            rows = await conn.exec_driver_sql(f"EXPLAIN {prepared.sql}", tuple(prepared.arguments(params)))
            plan = "\n".join(row[0] for row in rows)
            assert index in plan, f"{index} not used:\n{prepared.sql}\n{plan}"
        await conn.rollback()


# -- commits per saga (SQL) ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class ShipContext(SagaContext):
    order_id: str
    reserved: bool = False
    charged: bool = False


class Shipped(cqrs.Response):
    tracking: str


class Reserve(SagaStepHandler[ShipContext, cqrs.Response]):
    async def act(self, context: ShipContext) -> SagaStepResult[ShipContext, cqrs.Response]:
        context.reserved = True
        return self._generate_step_result(cqrs.Response())


class Charge(SagaStepHandler[ShipContext, cqrs.Response]):
    async def act(self, context: ShipContext) -> SagaStepResult[ShipContext, cqrs.Response]:
        context.charged = True
        return self._generate_step_result(cqrs.Response())


class Ship(SagaStepHandler[ShipContext, Shipped]):
    async def act(self, context: ShipContext) -> SagaStepResult[ShipContext, Shipped]:
        if context.order_id.startswith("lost-"):
            raise RuntimeError(f"parcel {context.order_id} lost")
        return self._generate_step_result(Shipped(tracking=f"T-{context.order_id}"))


class ShipSaga(Saga[ShipContext]):
    steps = [Reserve, Charge, Ship]


class Pack(SagaStepHandler[ShipContext, cqrs.Response]):
    async def act(self, context: ShipContext) -> SagaStepResult[ShipContext, cqrs.Response]:
        return self._generate_step_result(cqrs.Response())


class Label(SagaStepHandler[ShipContext, cqrs.Response]):
    async def act(self, context: ShipContext) -> SagaStepResult[ShipContext, cqrs.Response]:
        return self._generate_step_result(cqrs.Response())


class ReserveOnlySaga(Saga[ShipContext]):
    steps = [Reserve]


class PackedShipSaga(Saga[ShipContext]):
    steps = [Reserve, Charge, Pack, Label, Ship]


class Tally:
    """Counts the transactions SQLAlchemy commits and the statements it sends, on one engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.commits = 0
        self.rollbacks = 0
        self.statements: list[str] = []
        self.engine = engine
        sa.event.listen(engine, "commit", self._commit)
        sa.event.listen(engine, "rollback", self._rollback)
        sa.event.listen(engine, "after_cursor_execute", self._statement)

    def _commit(self, conn: sa.Connection) -> None:
        self.commits += 1

    def _rollback(self, conn: sa.Connection) -> None:
        self.rollbacks += 1

    def _statement(self, conn: sa.Connection, cursor: object, statement: str, *args: object) -> None:
        self.statements.append(statement.split(None, 1)[0].upper())

    def remove(self) -> None:
        sa.event.remove(self.engine, "commit", self._commit)
        sa.event.remove(self.engine, "rollback", self._rollback)
        sa.event.remove(self.engine, "after_cursor_execute", self._statement)


async def pg_commits(sql: SqlAlchemySagaStorage) -> int:
    """PostgreSQL's own count of committed transactions in the storage's database.

    The storage's (only) pooled connection is told to flush its statistics;
    it does so before it answers, so the count read from another database
    (whose own transactions are counted there) is exact.
    """
    import asyncpg

    # On asyncpg the storage keeps the connection it wrote on until the event loop's next iteration
    # (see SqlAlchemySagaStorage._execute_asyncpg): let it go back to the pool first.
    await asyncio.sleep(0)
    async with sql.engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.exec_driver_sql("SELECT pg_stat_force_next_flush()")
    url = sql.engine.url
    admin = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database="postgres")
    try:
        value = await admin.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", url.database)
    finally:
        await admin.close()
    return int(value)


class CountedRun(typing.NamedTuple):
    outcome: SagaOutcome
    tally: Tally
    server_commits: int | None  # PostgreSQL's own count (15 and later), else None


async def counted_run(sql: SqlAlchemySagaStorage, saga: type[Saga[ShipContext]], order_id: str) -> CountedRun:
    """One run of ``saga`` to its end, its commits counted by SQLAlchemy's events and by PostgreSQL itself.

    Connections and prepared statements are made by a first run, so the counted one counts only its writes.
    """
    mediator = bootstrap(di.Container(), sagas_mapper=lambda m: m.bind(ShipContext, saga), saga_storage=sql)
    await sql.engine.dispose()
    warm = await mediator.run(ShipContext(order_id="warm-up"))
    assert warm.status == SagaStatus.COMPLETED
    # pg_stat_force_next_flush() is PostgreSQL 15's; older servers are checked through SQLAlchemy only.
    server_counts = kind(sql) == "postgresql" and (sql.engine.dialect.server_version_info or (0,)) >= (15,)
    pg_before = await pg_commits(sql) if server_counts else 0
    tally = Tally(sql.engine.sync_engine)
    try:
        outcome = await mediator.run(ShipContext(order_id=order_id), correlation_id="req-7")
    finally:
        tally.remove()
    # The server's count includes the statistics flush's own transaction.
    server_commits = await pg_commits(sql) - pg_before - 1 if server_counts else None
    return CountedRun(outcome, tally, server_commits)


async def assert_shipped(sql: SqlAlchemySagaStorage, saga_id: uuid.UUID) -> None:
    """ShipSaga's order o-1, run with correlation id req-7, is stored completed with its whole history."""
    record = await record_of(sql, saga_id)
    assert (record.status, record.owner, record.version, record.correlation_id) == (
        SagaStatus.COMPLETED, None, 4, "req-7",
    )
    assert record.context == {"order_id": "o-1", "reserved": True, "charged": True}
    history = await sql.get_step_history(saga_id)
    assert steps(history) == [
        ("Reserve", "act", "completed"), ("Charge", "act", "completed"), ("Ship", "act", "completed"),
    ]
    assert history[-1].response == {"tracking": "T-o-1"}


def sqlalchemy_path(storage: SagaStorage) -> SqlAlchemySagaStorage:
    """The SQL storage with every write through SQLAlchemy, so that its events (which `Tally` counts) see each one.

    (On asyncpg the fast path's writes are counted by PostgreSQL and asyncpg's query logger instead, below.)
    """
    sql = sql_only(storage)
    return SqlAlchemySagaStorage(sql.engine, fast_path=False) if sql.fast_path else sql


async def test_a_three_step_saga_costs_four_commits(storage: SagaStorage) -> None:
    sql = sqlalchemy_path(storage)
    outcome, tally, server_commits = await counted_run(sql, ShipSaga, "o-1")

    assert outcome.status == SagaStatus.COMPLETED
    assert (tally.commits, tally.rollbacks) == (4, 0)  # start + one per step, COMPLETED folded into the last
    if kind(sql) == "postgresql":
        # One statement per commit: INSERT ... ON CONFLICT, then WITH u AS (UPDATE ...) INSERT INTO saga_log
        # (with group commit a lone saga's batches hold one write each, every one a WITH statement).
        start = "WITH" if sql.group_commit else "INSERT"
        assert tally.statements == [start, "WITH", "WITH", "WITH"]
        if server_commits is not None:
            assert server_commits == 4  # the server agrees
    else:
        assert tally.statements == ["INSERT", "UPDATE", "INSERT", "UPDATE", "INSERT", "UPDATE", "INSERT"]
    await assert_shipped(sql, outcome.saga_id)


@pytest.mark.parametrize(
    ("saga", "names"),
    [(ReserveOnlySaga, ["Reserve"]), (PackedShipSaga, ["Reserve", "Charge", "Pack", "Label", "Ship"])],
    ids=["1-step", "5-step"],
)
async def test_a_saga_of_n_steps_costs_n_plus_one_commits(
    storage: SagaStorage, saga: type[Saga[ShipContext]], names: list[str]
) -> None:
    """docs/performance.md: a completed saga of n steps is n + 1 commits (start, then one per step), n = 1 and 5."""
    sql = sqlalchemy_path(storage)
    n = len(names)
    outcome, tally, server_commits = await counted_run(sql, saga, "o-n")

    assert outcome.status == SagaStatus.COMPLETED
    assert (tally.commits, tally.rollbacks) == (n + 1, 0)
    if kind(sql) == "postgresql":
        assert tally.statements == ["WITH" if sql.group_commit else "INSERT"] + ["WITH"] * n
        if server_commits is not None:
            assert server_commits == n + 1  # the server agrees
    else:
        assert tally.statements == ["INSERT"] + ["UPDATE", "INSERT"] * n
    record = await record_of(sql, outcome.saga_id)
    assert (record.status, record.owner, record.version) == (SagaStatus.COMPLETED, None, n + 1)
    history = await sql.get_step_history(outcome.saga_id)
    assert steps(history) == [(name, "act", "completed") for name in names]


@pytest.mark.parametrize(("compensation_commits", "commits"), [("together", 5), ("each", 6)])
async def test_a_failing_saga_costs_one_commit_for_the_failure_and_one_for_its_compensations(
    storage: SagaStorage, compensation_commits: typing.Literal["together", "each"], commits: int
) -> None:
    sql = sqlalchemy_path(storage)
    mediator = bootstrap(
        di.Container(), sagas_mapper=lambda m: m.bind(ShipContext, ShipSaga), saga_storage=sql,
        compensation_commits=compensation_commits,
    )
    warm = await mediator.run(ShipContext(order_id="warm-up"))  # connections and statements made
    assert warm.status == SagaStatus.COMPLETED
    tally = Tally(sql.engine.sync_engine)
    try:
        outcome = await mediator.run(ShipContext(order_id="lost-2"))
    finally:
        tally.remove()

    assert outcome.status == SagaStatus.FAILED
    # start, Reserve, Charge; Ship's failure with COMPENSATING; then Charge's and Reserve's compensations
    # with FAILED in one commit ("together"), or in one commit each, the last one storing FAILED ("each").
    assert (tally.commits, tally.rollbacks) == (commits, 0)
    history = await sql.get_step_history(outcome.saga_id)
    assert steps(history) == [
        ("Reserve", "act", "completed"), ("Charge", "act", "completed"), ("Ship", "act", "failed"),
        ("Charge", "compensate", "compensated"), ("Reserve", "compensate", "compensated"),
    ]


async def test_each_engine_write_is_one_commit(storage: SagaStorage) -> None:
    sql = sqlalchemy_path(storage)
    tally = Tally(sql.engine.sync_engine)
    try:
        saga_id, lease = await started(sql)
        counts = [tally.commits]
        assert await sql.checkpoint(saga_id, lease, entry=act("one", {"r": 1}), context={"a": 1}, lease_seconds=LEASE)
        counts.append(tally.commits)
        assert await sql.renew_lease(saga_id, lease, LEASE)
        counts.append(tally.commits)
        assert await sql.release_lease(saga_id, lease)
        counts.append(tally.commits)
        claim = await sql.claim_saga(saga_id, "runner-b", LEASE)
        assert claim is not None and claim.lease is not None
        counts.append(tally.commits)
        assert await sql.checkpoint(saga_id, claim.lease, entry=None, lease_seconds=0, release=True)
        counts.append(tally.commits)
        assert len(await sql.claim_recoverable("r", LEASE, limit=10)) == 1
        counts.append(tally.commits)
        # A fenced write commits nothing it was asked to write.
        assert not await sql.checkpoint(saga_id, lease, entry=act("two"), lease_seconds=LEASE)
    finally:
        tally.remove()
    assert counts == [1, 2, 3, 4, 5, 6, 7]
    assert steps(await sql.get_step_history(saga_id)) == [("one", "act", "completed")]


# -- the asyncpg fast path -----------------------------------------------------------------------------------------


def asyncpg_only(storage: SagaStorage) -> SqlAlchemySagaStorage:
    sql = sql_only(storage)
    if sql.engine.dialect.driver != "asyncpg":
        pytest.skip("the asyncpg fast path")
    if sql.group_commit:
        pytest.skip("the per-statement fast path (group commit's batches: tests/test_group_commit.py)")
    return sql


def driver_sql(sql: SqlAlchemySagaStorage, statement: typing.Any) -> str:
    """The SQL the fast path sends for ``statement``."""
    prepared = typing.cast(typing.Any, sql._executor).prepared(statement)
    return typing.cast(str, prepared.sql)


def hot_statements(sql: SqlAlchemySagaStorage) -> list[typing.Any]:
    """The engine's writes: start, the checkpoints of a 3-step saga (the last one final), renew, release."""
    statements = sql._sql
    return [
        statements.start,
        statements.checkpoint(True, True, False, False, False),
        statements.checkpoint(True, True, True, False, True),
        statements.renew,
        statements.release,
    ]


def other_writes(sql: SqlAlchemySagaStorage) -> list[typing.Any]:
    """The other single-statement writes (operator and python-cqrs-shaped API), also on the fast path."""
    statements = sql._sql
    return [
        statements.checkpoint(False, False, False, False, True),
        statements.checkpoint(True, False, True, True, False),
        statements.amend(False, True, False, False, False, False, True, False),  # update_context, versioned
        statements.amend(False, True, False, False, False, False, False, False),  # update_context
        statements.amend(False, False, True, False, False, False, False, False),  # update_status
        statements.amend(True, False, False, False, False, False, False, False),  # log_step
        statements.amend(False, False, False, False, False, True, False, False),  # increment_recovery_attempts
        statements.amend(False, False, False, False, True, False, False, False),  # set_recovery_attempts
        statements.park,
        statements.reset,
        statements.purge(purge_filter(datetime.timedelta(0), None))[0],
    ]


async def every_single_statement_write(sql: SqlAlchemySagaStorage) -> None:
    """Each of `hot_statements` and `other_writes`, at least once."""
    saga_id, lease = await started(sql)
    assert await sql.checkpoint(saga_id, lease, entry=act("one", {"r": 1}), context={"a": 1}, lease_seconds=LEASE)
    assert await sql.renew_lease(saga_id, lease, LEASE)
    assert await sql.checkpoint(
        saga_id, lease, entry=act("two"), context={"a": 2}, status=SagaStatus.COMPLETED,
        lease_seconds=LEASE, release=True,
    )
    other, lease = await started(sql)
    assert await sql.checkpoint(
        other, lease, entry=StepEntry("one", "act", SagaStepStatus.FAILED, "boom", None),
        status=SagaStatus.COMPENSATING, error="boom", lease_seconds=LEASE,
    )
    assert await sql.checkpoint(other, lease, entry=None, lease_seconds=LEASE, release=True)
    cqrs_id = uuid.uuid4()
    await sql.create_saga(cqrs_id, "order", {"a": 1})  # a start and a release
    await sql.update_context(cqrs_id, {"a": 2}, current_version=1)
    await sql.update_context(cqrs_id, {"a": 3})
    await sql.update_status(cqrs_id, SagaStatus.RUNNING)
    await sql.log_step(cqrs_id, "one", "act", SagaStepStatus.COMPLETED)
    await sql.increment_recovery_attempts(cqrs_id)
    await sql.set_recovery_attempts(cqrs_id, 0)
    await sql.park_saga(cqrs_id, "parked")
    await sql.reset_saga(cqrs_id)
    await sql.purge_sagas(older_than=datetime.timedelta(hours=1))


@contextlib.contextmanager
def driver_queries(sql: SqlAlchemySagaStorage) -> typing.Iterator[list[str]]:
    """Every query asyncpg's own query logger sees on the connections the pool opens from here on (the pool's
    earlier connections must be gone: dispose the engine first). SQLAlchemy's path sends its statements as
    prepared statements, which the logger does not see; the fast path's `execute` calls it does."""
    sent: list[str] = []

    def on_connect(dbapi_connection: typing.Any, record: object) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda query: sent.append(query.query))

    pool = sql.engine.sync_engine.pool
    sa.event.listen(pool, "connect", on_connect)
    try:
        yield sent
    finally:
        sa.event.remove(pool, "connect", on_connect)


@contextlib.contextmanager
def sqlalchemy_statements(sql: SqlAlchemySagaStorage) -> typing.Iterator[list[str]]:
    """Every statement SQLAlchemy executes on the storage's engine (a ``before_cursor_execute`` listener)."""
    sent: list[str] = []

    def record(conn: sa.Connection, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement)

    sa.event.listen(sql.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(sql.engine.sync_engine, "before_cursor_execute", record)


async def test_on_asyncpg_the_fast_path_is_on_with_the_default_options(storage: SagaStorage) -> None:
    """On the SQLAlchemy version installed, the fast path must not be off by default: if this fails, a SQLAlchemy
    or asyncpg upgrade (or a change here) switched it off, and every saga write costs several times the CPU."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    sql = asyncpg_only(storage)
    assert sql.fast_path
    engine = create_async_engine(sql.engine.url)
    try:
        assert SqlAlchemySagaStorage(async_sessionmaker(engine)).fast_path
        assert SqlAlchemySagaStorage(engine).fast_path
        assert not SqlAlchemySagaStorage(engine, fast_path=False).fast_path
    finally:
        await engine.dispose()
    await sql.engine.dispose()
    with driver_queries(sql) as sent, sqlalchemy_statements(sql) as seen:
        saga_id, lease = await started(sql)
        assert await sql.renew_lease(saga_id, lease, LEASE)
        await asyncio.sleep(0)  # asyncpg hands records to its loggers on the loop's next iteration
    assert sent == [driver_sql(sql, sql._sql.start), driver_sql(sql, sql._sql.renew)]
    assert seen == []


async def test_on_asyncpg_a_claim_and_its_histories_are_one_statement_on_the_driver(storage: SagaStorage) -> None:
    """A batch of `claim_recoverable`, and one-saga claims made at the same time, are one statement each on the
    asyncpg connections, outside any transaction (one round trip and one commit), the claimed sagas' histories
    with them, and nothing goes through SQLAlchemy."""
    sql = asyncpg_only(storage)
    [(warm_up, _)] = await free_sagas(sql, 1)
    free = dict(await free_sagas(sql, 12))
    await sql.engine.dispose()  # every connection from now on is opened, so logged, by the listener
    with driver_queries(sql) as sent, sqlalchemy_statements(sql) as seen:
        # Each statement's first run on a connection also reads the types of its columns: not counted.
        assert await sql.claim_saga(warm_up, "runner-b", LEASE) is not None
        assert await sql.claim_recoverable("runner-b", LEASE, limit=1, max_attempts=0) == []
        await asyncio.sleep(0)
        sent.clear()
        batch = await sql.claim_recoverable("runner-b", LEASE, limit=6)
        rest = [saga_id for saga_id in free if saga_id not in {c.record.saga_id for c in batch}]
        singles = await all_at_once([functools.partial(sql.claim_saga, s, "runner-c", LEASE) for s in rest])
        await asyncio.sleep(0)  # asyncpg hands records to its loggers on the loop's next iteration
    statements = ClaimStatements(sql._sql)
    assert sent == [driver_sql(sql, statements.claim_many(False, False)), driver_sql(sql, statements.claim_ids())]
    assert seen == []
    assert len(batch) == 6 and len(singles) == 6
    for claim in [*batch, *singles]:
        assert claim is not None and claim.lease is not None
        assert len(claim.history) == free[claim.record.saga_id]
        assert claim.history == await sql.get_history(claim.record.saga_id)


async def test_on_asyncpg_the_engine_writes_run_on_the_driver_one_commit_each(storage: SagaStorage) -> None:
    """A 3-step saga sends 4 statements on the asyncpg connections (start, one checkpoint per step), each
    committing on its own (PostgreSQL counts 4 transactions), and no BEGIN, COMMIT or anything else."""
    sql = asyncpg_only(storage)
    await sql.engine.dispose()  # every connection from now on is opened, so logged, by the listener
    pool = sql.engine.sync_engine.pool
    with driver_queries(sql) as sent:
        mediator = bootstrap(di.Container(), sagas_mapper=lambda m: m.bind(ShipContext, ShipSaga), saga_storage=sql)
        warm = await mediator.run(ShipContext(order_id="warm-up"))  # each statement prepared once
        assert warm.status == SagaStatus.COMPLETED
        before = await pg_commits(sql)
        await asyncio.sleep(0)  # asyncpg hands records to its loggers on the loop's next iteration
        sent.clear()
        outcome = await mediator.run(ShipContext(order_id="o-1"), correlation_id="req-7")
        await asyncio.sleep(0)
        run = list(sent)
        assert outcome.status == SagaStatus.COMPLETED
        assert await pg_commits(sql) - before == 4 + 1  # start + one per step (+ the statistics flush's own)

    start, step, last = (driver_sql(sql, s) for s in hot_statements(sql)[:3])
    assert run == [start, step, step, last]
    start, step = " ".join(start.split()), " ".join(step.split())
    assert start.startswith("INSERT INTO saga_executions") and start.endswith("ON CONFLICT (id) DO NOTHING")
    assert step.startswith("WITH u AS (UPDATE saga_executions") and "INSERT INTO saga_log" in step
    assert not [query for query in run if query.split(None, 1)[0].upper() in ("BEGIN", "START", "COMMIT", "END")]
    await assert_shipped(sql, outcome.saga_id)
    # The connection written on is back in the pool once the loop has turned.
    assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_statement_listener_on_the_engine_does_not_turn_the_fast_path_off(storage: SagaStorage) -> None:
    """A listener that stays (a statement counter) or one added and removed again: the writes stay on the driver,
    where the listener does not see them (the INFO log says so); reads still go through SQLAlchemy."""
    sql = asyncpg_only(storage)
    await sql.engine.dispose()
    with driver_queries(sql) as sent:
        with sqlalchemy_statements(sql) as seen:
            saga_id, lease = await started(sql)
            assert await sql.checkpoint(saga_id, lease, entry=act("one"), context={"a": 1}, lease_seconds=LEASE)
            assert sql.fast_path
            assert seen == []
            assert (await record_of(sql, saga_id)).version == 2
            assert len(seen) == 1 and seen[0].lstrip().upper().startswith("SELECT")
        # Removed again: nothing changes either.
        assert await sql.renew_lease(saga_id, lease, LEASE)
        await asyncio.sleep(0)
    checkpoint = sql._sql.checkpoint(True, True, False, False, False)
    assert sent == [driver_sql(sql, sql._sql.start), driver_sql(sql, checkpoint), driver_sql(sql, sql._sql.renew)]


async def test_the_fast_path_sends_the_sql_sqlalchemy_sends_and_fast_path_false_routes_writes_through_it(
    storage: SagaStorage,
) -> None:
    sql = asyncpg_only(storage)
    writes = hot_statements(sql) + other_writes(sql)
    await sql.engine.dispose()
    with driver_queries(sql) as fast_sent, sqlalchemy_statements(sql) as fast_seen:
        await every_single_statement_write(sql)
        await asyncio.sleep(0)
    slow = SqlAlchemySagaStorage(sql.engine, fast_path=False)
    assert not slow.fast_path
    with driver_queries(slow) as slow_sent, sqlalchemy_statements(slow) as slow_seen:
        await every_single_statement_write(slow)
        await asyncio.sleep(0)
    for statement in writes:
        text = driver_sql(sql, statement)
        assert text in fast_sent, text  # sent by the fast path, on the driver
        assert text in slow_seen, text  # the very same SQL, sent by SQLAlchemy
        assert text not in fast_seen and text not in slow_sent


async def test_the_fast_path_writes_json_as_sqlalchemy_does(storage: SagaStorage) -> None:
    sql = asyncpg_only(storage)
    context = {"text": "naïve \u2603 \"quoted\"", "n": [1, 2.5, None, True], "nested": {"empty": {}}}
    saga_id, lease = await started(sql, context=context)
    assert await sql.checkpoint(saga_id, lease, entry=act("one", None), context=context, lease_seconds=LEASE)
    assert await sql.checkpoint(saga_id, lease, entry=act("two", {"list": []}), lease_seconds=LEASE)
    assert (await record_of(sql, saga_id)).context == context
    history = await sql.get_step_history(saga_id)
    assert [entry.response for entry in history] == [None, {"list": []}]
    async with sql.engine.connect() as conn:
        nulls = (await conn.exec_driver_sql(
            "SELECT response IS NULL FROM saga_log WHERE saga_id = $1 ORDER BY seq", (saga_id,)
        )).scalars().all()
    assert nulls == [True, False]  # no response is SQL NULL, not the JSON null


class PoolEvents:
    """Counts a pool's invalidations (and keeps the exceptions given)."""

    def __init__(self, pool: sa.Pool) -> None:
        self.pool = pool
        self.invalidated: list[BaseException | None] = []
        sa.event.listen(pool, "invalidate", self._invalidate)

    def _invalidate(self, dbapi_connection: object, record: object, exception: BaseException | None) -> None:
        self.invalidated.append(exception)

    def remove(self) -> None:
        sa.event.remove(self.pool, "invalidate", self._invalidate)


async def test_on_the_fast_path_a_violated_constraint_is_an_integrity_error_and_the_connection_stays(
    storage: SagaStorage,
) -> None:
    import asyncpg

    sql = asyncpg_only(storage)
    saga_id, lease = await started(sql)
    events = PoolEvents(sql.engine.sync_engine.pool)
    try:
        with pytest.raises(sa.exc.IntegrityError) as raised:
            # saga_log.step_name is NOT NULL: the whole one-statement checkpoint fails.
            await sql.checkpoint(saga_id, lease, entry=act(None), context={"a": 1}, lease_seconds=LEASE)  # type: ignore[arg-type]
        assert isinstance(raised.value.orig, asyncpg.NotNullViolationError)
        assert not raised.value.connection_invalidated
        with pytest.raises(sa.exc.DBAPIError) as other:
            await sql.checkpoint(saga_id, lease, entry=None, error="x", context={"nul": "\x00"}, lease_seconds=LEASE)
        assert not isinstance(other.value, sa.exc.IntegrityError) and not other.value.connection_invalidated
        assert isinstance(other.value.orig, asyncpg.PostgresError)  # JSONB cannot hold \u0000
        assert events.invalidated == []
    finally:
        events.remove()
    assert (await record_of(sql, saga_id)).version == 1
    assert await sql.get_history(saga_id) == []
    assert await sql.checkpoint(saga_id, lease, entry=act("one"), lease_seconds=LEASE)
    await asyncio.sleep(0)
    assert sql.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def kill_connections(storage: SqlAlchemySagaStorage) -> int:
    """``pg_terminate_backend`` every connection to the storage's database, waiting until each is gone."""
    import asyncpg

    url = storage.engine.url
    admin = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database="postgres")
    try:
        return int(await admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            url.database,
        ))
    finally:
        await admin.close()


async def test_on_the_fast_path_a_lost_connection_is_discarded_with_the_rest_of_the_pool(
    storage: SagaStorage,
) -> None:
    """The server dropped every connection (a restart, a failover): the write that meets one fails with SQLAlchemy's
    error for a lost connection, that connection is invalidated and the pool replaced, so the next write works at
    once (it would meet another dead connection otherwise; the pool does not pre-ping)."""
    import asyncpg

    sql = asyncpg_only(storage)
    saga_id, lease = await started(sql)
    await asyncio.gather(*(sql.get_saga(saga_id) for _ in range(3)))  # several connections in the pool
    await asyncio.sleep(0)  # the connection lent to the write is back in the pool
    old_pool = sql.engine.sync_engine.pool
    assert old_pool.checkedin() >= 2  # type: ignore[attr-defined]
    events = PoolEvents(old_pool)
    try:
        assert await kill_connections(sql) >= 2
        with pytest.raises(sa.exc.OperationalError) as raised:
            await sql.renew_lease(saga_id, lease, LEASE)
    finally:
        events.remove()
    assert raised.value.connection_invalidated
    assert isinstance(raised.value.orig, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError))
    assert len(events.invalidated) == 1
    assert sql.engine.sync_engine.pool is not old_pool
    assert await sql.renew_lease(saga_id, lease, LEASE)
    assert await sql.checkpoint(saga_id, lease, entry=act("one"), lease_seconds=LEASE)
    assert await pg_backends(sql) >= 1


async def test_a_cancelled_fast_write_invalidates_its_connection(storage: SagaStorage) -> None:
    """Cancelled while its statement waits on the server, a write's connection is discarded (a statement may be in
    flight) and the cancellation goes on; the other side's lock is not disturbed and the next write works."""
    sql = asyncpg_only(storage)
    saga_id, lease = await started(sql)
    events = PoolEvents(sql.engine.sync_engine.pool)
    try:
        async with sql.engine.connect() as blocker:
            await blocker.exec_driver_sql("SELECT 1 FROM saga_executions WHERE id = $1 FOR UPDATE", (saga_id,))
            write = asyncio.ensure_future(sql.renew_lease(saga_id, lease, LEASE))
            await until_waiting_for_a_lock(sql, write)
            write.cancel()
            with pytest.raises(asyncio.CancelledError):
                await write
            await blocker.rollback()
    finally:
        events.remove()
    assert len(events.invalidated) == 1
    assert await sql.renew_lease(saga_id, lease, LEASE)


async def test_the_fast_path_decision_is_logged_once_per_engine(storage: SagaStorage) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from log_capture import capturing

    sql = asyncpg_only(storage)
    engine = create_async_engine(sql.engine.url)
    mapped = create_async_engine(sql.engine.url, execution_options={"schema_translate_map": {None: "public"}})
    try:
        with capturing("cqrs.saga.storage") as logged:
            SqlAlchemySagaStorage(engine)
            SqlAlchemySagaStorage(engine)
            SqlAlchemySagaStorage(engine, fast_path=False)
            by_default = SqlAlchemySagaStorage(mapped)
            asked = SqlAlchemySagaStorage(mapped, fast_path=True)
        on, off, refused = logged.records
        assert on.levelname == "INFO" and "fast path is on" in on.getMessage()
        assert "statement events" in on.getMessage() and "fast_path=False" in on.getMessage()
        assert off.levelname == "INFO" and "schema_translate_map" in off.getMessage()
        assert refused.levelname == "WARNING" and "schema_translate_map" in refused.getMessage()
        assert not by_default.fast_path and not asked.fast_path
        # Through SQLAlchemy, the map applies.
        await asked.create_tables()
        saga_id, _ = await started(asked)
        assert await sql.get_saga(saga_id) is not None
    finally:
        await engine.dispose()
        await mapped.dispose()


async def test_asking_for_a_fast_path_where_there_is_none_says_why_and_writes_through_sqlalchemy() -> None:
    """An in-memory SQLite database has no fast path (a connection of the storage's own would not see it)."""
    from log_capture import capturing

    with capturing("cqrs.saga.storage") as logged:
        store = SqlAlchemySagaStorage.from_url("sqlite+aiosqlite://", fast_path=True)
    try:
        [warning] = logged.records
        assert warning.levelname == "WARNING" and "in memory" in warning.getMessage()
        assert not store.fast_path
        await store.create_tables()
        assert await store.start_saga(new_saga(), "runner-a", LEASE) is not None
    finally:
        await store.close()


async def test_the_fast_path_on_a_user_engine_without_a_queue_pool(storage: SagaStorage) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.pool import NullPool

    sql = asyncpg_only(storage)
    backends = await pg_backends(sql)  # the fixture storage's pooled connections
    engine = create_async_engine(sql.engine.url, poolclass=NullPool)
    try:
        store = SqlAlchemySagaStorage(async_sessionmaker(engine))
        mediator = bootstrap(di.Container(), sagas_mapper=lambda m: m.bind(ShipContext, ShipSaga), saga_storage=store)
        outcome = await mediator.run(ShipContext(order_id="o-2"))
        assert outcome.status == SagaStatus.COMPLETED
        assert (await record_of(store, outcome.saga_id)).version == 4
        await store.close()
        assert await pg_backends(store) == backends  # every connection of its own was closed
    finally:
        await engine.dispose()


async def test_the_fast_path_after_the_engine_was_disposed_mid_run(storage: SagaStorage) -> None:
    sql = asyncpg_only(storage)
    saga_id, lease = await started(sql)
    # The connection just written on is still the storage's: dispose the pool under it.
    await sql.engine.dispose()
    assert await sql.checkpoint(saga_id, lease, entry=act("one"), context={"a": 1}, lease_seconds=LEASE)
    assert await sql.renew_lease(saga_id, lease, LEASE)
    await sql.engine.dispose()
    await asyncio.sleep(0)
    assert await sql.release_lease(saga_id, lease)
    await sql.close()
    assert await pg_backends(sql) == 0


# docs/storage.md: no write starts on a lent connection checked out 0.1 s or more earlier.
LEND_LIMIT = 0.1


class PoolLog:
    """The checkouts and checkins of a pool, each with the event loop's time."""

    def __init__(self, pool: sa.Pool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.events: list[tuple[str, float]] = []
        sa.event.listen(pool, "checkout", self._checkout)
        sa.event.listen(pool, "checkin", self._checkin)

    def _checkout(self, *args: object) -> None:
        self.events.append(("checkout", self.loop.time()))

    def _checkin(self, *args: object) -> None:
        self.events.append(("checkin", self.loop.time()))

    def count(self, kind: str) -> int:
        return sum(1 for event, _ in self.events if event == kind)

    def remove(self) -> None:
        sa.event.remove(self.pool, "checkout", self._checkout)
        sa.event.remove(self.pool, "checkin", self._checkin)


async def test_on_asyncpg_back_to_back_writes_share_one_lent_connection_until_the_loop_turns(
    storage: SagaStorage,
) -> None:
    """Writes with no loop iteration between them take the connection out of the pool once; it stays lent (checked
    out) after each write, goes back on the loop's next iteration, and a read taking it back early opens no other."""
    sql = asyncpg_only(storage)
    await sql.engine.dispose()
    pool = sql.engine.sync_engine.pool
    log = PoolLog(pool)
    opened: list[object] = []
    sa.event.listen(pool, "connect", lambda *args: opened.append(args))
    try:
        saga_id, lease = await started(sql)
        assert pool.checkedout() == 1  # lent: still out of the pool after the write returned
        assert await sql.checkpoint(saga_id, lease, entry=act("one"), context={"a": 1}, lease_seconds=LEASE)
        assert await sql.renew_lease(saga_id, lease, LEASE)
        assert (log.count("checkout"), log.count("checkin"), pool.checkedout()) == (1, 0, 1)

        await asyncio.sleep(0)  # one iteration of the loop
        assert (log.count("checkout"), log.count("checkin"), pool.checkedout()) == (1, 1, 0)

        # The next write takes it out again; a read right after it gets the lent connection back from the pool
        # (given back before the read's checkout) instead of opening a second one.
        assert await sql.renew_lease(saga_id, lease, LEASE)
        assert pool.checkedout() == 1
        assert (await record_of(sql, saga_id)).version == 2
        assert (pool.checkedout(), pool.checkedin(), len(opened)) == (0, 1, 1)
    finally:
        log.remove()


async def test_on_asyncpg_a_stream_of_writes_cannot_keep_a_connection_lent_past_the_limit(
    storage: SagaStorage,
) -> None:
    """Writes back to back with no loop iteration between them never leave the connection idle at an iteration, so
    only the limit returns it: no write starts on a connection taken out of the pool 0.1 s (loop time) or more
    earlier, and the stream, run until a write has started 0.2 s after the first checkout, gives it back."""
    sql = asyncpg_only(storage)
    await sql.engine.dispose()
    pool = sql.engine.sync_engine.pool
    loop = asyncio.get_running_loop()
    log = PoolLog(pool)
    try:
        saga_id, lease = await started(sql)
        [(event, first_checkout)] = log.events
        assert event == "checkout"
        while True:
            start = loop.time()
            assert await sql.renew_lease(saga_id, lease, LEASE)
            log.events.append(("write", start))  # after the write's own checkin and checkout, if any
            if start >= first_checkout + 2 * LEND_LIMIT:
                break
        await asyncio.sleep(0)
    finally:
        log.remove()

    lent_since: float | None = first_checkout
    for event, at in log.events[1:]:
        if event == "checkout":
            lent_since = at
        elif event == "checkin":
            lent_since = None
        else:
            assert lent_since is not None and at < lent_since + LEND_LIMIT, (at, lent_since)
    assert log.count("checkin") >= 2  # given back at least once mid-stream (+ once after it)
    assert log.count("checkout") == log.count("checkin")
    assert pool.checkedout() == 0


# -- MySQL and MariaDB -------------------------------------------------------------------------------------------


def mysql_only(storage: SagaStorage) -> SqlAlchemySagaStorage:
    sql = sql_only(storage)
    if kind(sql) != "mysql":
        pytest.skip("a property of the MySQL/MariaDB storage")
    return sql


async def test_on_mysql_an_update_that_changes_nothing_still_counts_its_row(storage: SagaStorage) -> None:
    """The fenced writes read "matched no row" as "the lease was lost": MySQL reports changed rows unless the
    client asks for matched ones (CLIENT.FOUND_ROWS), which SQLAlchemy's MySQL dialects do."""
    sql = mysql_only(storage)
    saga_id, _ = await started(sql)
    table = Base.metadata.tables["saga_executions"]
    async with sql.engine.begin() as conn:
        result = await conn.execute(sa.update(table).where(table.c.id == saga_id).values(name=table.c.name))
    assert result.rowcount == 1
    assert sql.engine.dialect.supports_sane_rowcount


async def test_a_mysql_dialect_that_cannot_count_matched_rows_is_refused(mariadb_url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(mariadb_url)
    try:
        engine.dialect.supports_sane_rowcount = False  # as the dialect says when it could not set the flag
        with pytest.raises(ValueError, match="matched rows"):
            SqlAlchemySagaStorage(engine)
    finally:
        await engine.dispose()


async def test_on_mysql_concurrent_claims_take_successive_sagas(storage: SagaStorage) -> None:
    """While one claim's transaction is open, another one claims the next sagas instead of finding all of them
    locked (a locking read sorted by expiry would lock every candidate it read, not just those it took)."""
    from cqrs.saga.storage.sqlalchemy._transactions import claim_recoverable_mysql

    sql = mysql_only(storage)
    ids = []
    for _ in range(9):
        saga_id, lease = await started(sql)
        assert await sql.release_lease(saga_id, lease)
        ids.append(saga_id)
        await advance(sql, 1)

    def claim(owner: str) -> typing.Callable[[sa.Connection], list[uuid.UUID]]:
        params = {"b_owner": owner, "b_lease_seconds": LEASE}
        return lambda conn: claim_recoverable_mysql(conn, sql._sql, params, limit=3, names=False, max_attempts=False)

    async with sql.engine.connect() as first, sql.engine.connect() as second:
        mine = await first.run_sync(claim("first"))  # its transaction stays open, its rows locked
        theirs = await second.run_sync(claim("second"))
        await first.commit()
        await second.commit()
    assert mine == ids[:3]
    assert theirs == ids[3:6]
    assert [c.record.saga_id for c in await sql.claim_recoverable("third", LEASE, limit=10)] == ids[6:]


async def test_the_storage_works_on_aiomysql_too(mariadb_url: str) -> None:
    pytest.importorskip("aiomysql")
    store = SqlAlchemySagaStorage.from_url(mariadb_url.replace("+asyncmy", "+aiomysql"))
    try:
        await store.create_tables()
        saga_id, lease = await started(store)
        assert await store.start_saga(new_saga(saga_id=saga_id), "runner-b", LEASE) is None
        assert await store.checkpoint(saga_id, lease, entry=act("one", {"r": 1}), context={"a": 1}, lease_seconds=LEASE)
        assert not await store.renew_lease(saga_id, Lease("runner-a", 2), LEASE)
        assert await store.release_lease(saga_id, lease)
        [claim] = await store.claim_recoverable("r", LEASE, limit=5)
        assert (claim.record.context, steps(claim.history)) == ({"a": 1}, [("one", "act", "completed")])
    finally:
        await store.close()
