"""Group commit on PostgreSQL (``SqlAlchemySagaStorage(..., group_commit=True)``): the same promises per write.

Batching is shown by PostgreSQL itself: rows written by one transaction carry
its id (``xmin``), so writes that share a commit share an ``xmin``. Writes
queued in one iteration of the event loop reach the writer together (its task
runs after theirs), so which writes share a batch is deterministic here.
"""

from __future__ import annotations

import asyncio
import logging
import typing
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from cqrs.outbox.models import OutboxMessage
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import Lease, NewSaga, StepEntry
from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage, _group_commit
from durability.db import terminate_backends

pytestmark = pytest.mark.postgres

LEASE = 30.0


def act(step: str) -> StepEntry:
    return StepEntry(step, "act", SagaStepStatus.COMPLETED, None, {"step": step})


async def storage_on(url: str, **kwargs: typing.Any) -> SqlAlchemySagaStorage:
    storage = SqlAlchemySagaStorage.from_url(url, group_commit=True, **kwargs)
    await storage.create_tables()
    return storage


async def started(storage: SqlAlchemySagaStorage, count: int) -> list[tuple[uuid.UUID, Lease]]:
    ids = [uuid.uuid4() for _ in range(count)]
    leases = await asyncio.gather(
        *(storage.start_saga(NewSaga(saga_id, "order", {"n": 0}), "runner", LEASE) for saga_id in ids)
    )
    assert all(lease is not None for lease in leases)
    return [(saga_id, typing.cast(Lease, lease)) for saga_id, lease in zip(ids, leases, strict=True)]


async def xmins(storage: SqlAlchemySagaStorage, table: str, column: str, ids: typing.Iterable[uuid.UUID]) -> list[str]:
    """The transaction ids that wrote each saga's rows of ``table`` (``column`` is its saga id), one set per saga."""
    async with storage.engine.connect() as conn:
        rows = (await conn.execute(
            sa.text(f"SELECT {column}, xmin::text FROM {table} WHERE {column} = ANY(:ids)"), {"ids": list(ids)}
        )).all()
    return sorted(str(xmin) for _, xmin in rows)


def test_group_commit_is_for_postgresql_only(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="group_commit=True needs PostgreSQL"):
        SqlAlchemySagaStorage.from_url(sqlite_url, group_commit=True)


async def test_writes_queued_together_share_one_commit(postgres_url: str) -> None:
    storage = await storage_on(postgres_url)
    try:
        assert storage.group_commit and storage.fast_path
        sagas = await started(storage, 12)
        ids = [saga_id for saga_id, _ in sagas]
        assert len(set(await xmins(storage, "saga_executions", "id", ids))) == 1  # the 12 starts: one commit
        written = await asyncio.gather(*(
            storage.checkpoint(saga_id, lease, entry=act("reserve"), context={"n": 1}, lease_seconds=LEASE)
            for saga_id, lease in sagas
        ))
        assert written == [True] * 12
        # The 12 updates and the 12 log rows: one transaction, not the starts' one.
        updated = await xmins(storage, "saga_executions", "id", ids)
        logged = await xmins(storage, "saga_log", "saga_id", ids)
        assert len(set(updated)) == 1 and set(updated) == set(logged) and len(logged) == 12
        for saga_id in ids:
            record = await storage.get_saga(saga_id)
            assert record is not None and (record.version, record.context) == (2, {"n": 1})
            history = await storage.get_history(saga_id)
            assert history is not None and [(e.step_name, e.response) for e in history] == [
                ("reserve", {"step": "reserve"})
            ]
    finally:
        await storage.close()


async def test_fenced_checkpoints_in_a_batch_are_refused_and_the_rest_commit(postgres_url: str) -> None:
    """A lost lease (another runner claimed the saga) and a stale epoch, in the same batch as good checkpoints:
    those two get False and write nothing (their outbox rows neither); the others commit together."""
    storage = await storage_on(postgres_url)
    other = SqlAlchemySagaStorage.from_url(postgres_url)
    try:
        sagas = await started(storage, 6)
        lost_id, stale_id = sagas[0][0], sagas[1][0]
        async with storage.engine.begin() as conn:  # the runner's lease on `lost` expired ...
            await conn.execute(
                sa.text("UPDATE saga_executions SET lease_expires_at = now() - interval '1 hour' WHERE id = :id"),
                {"id": lost_id},
            )
        claim = await other.claim_saga(lost_id, "rescuer", LEASE)  # ... and another runner took it over
        assert claim is not None and claim.lease is not None and claim.lease.epoch == 2
        leases = {saga_id: lease for saga_id, lease in sagas}
        leases[stale_id] = Lease(owner="runner", epoch=7)

        def message(saga_id: uuid.UUID) -> OutboxMessage:
            return OutboxMessage(uuid.uuid4(), "orders", "Reserved", {"saga": str(saga_id)})

        written = await asyncio.gather(*(
            storage.checkpoint(saga_id, leases[saga_id], entry=act("reserve"), context={"n": 1},
                               lease_seconds=LEASE, outbox=[message(saga_id)])
            for saga_id, _ in sagas
        ))
        assert written == [False, False, True, True, True, True]
        good = [saga_id for saga_id, _ in sagas[2:]]
        commits = set(await xmins(storage, "saga_executions", "id", good))
        assert len(commits) == 1
        assert set(await xmins(storage, "saga_log", "saga_id", good)) == commits
        assert set(await xmins(storage, "saga_outbox", "saga_id", good)) == commits  # outbox rows: same commit
        for saga_id in (lost_id, stale_id):
            assert await storage.get_history(saga_id) == []
            assert await storage.list_outbox(saga_id=saga_id) == []
        lost = await storage.get_saga(lost_id)
        assert lost is not None and (lost.owner, lost.lease_epoch, lost.context) == ("rescuer", 2, {"n": 0})
        stale = await storage.get_saga(stale_id)
        assert stale is not None and (stale.version, stale.context) == (1, {"n": 0})
    finally:
        await other.close()
        await storage.close()


async def test_a_write_that_fails_fails_alone_and_the_rest_of_its_batch_commits(postgres_url: str) -> None:
    """The batch statement fails as a whole (nothing of it is written); each write is then made on its own,
    so only the ones whose own write fails raise: a step name too long for its column, a duplicate message id."""
    storage = await storage_on(postgres_url)
    try:
        sagas = await started(storage, 5)
        taken = uuid.uuid4()
        first, second = sagas[0], sagas[1]
        assert await storage.checkpoint(
            *first, entry=None, lease_seconds=LEASE,
            outbox=[OutboxMessage(message_id=taken, topic="t", name="N", payload={})],
        )
        calls = [
            storage.checkpoint(*sagas[2], entry=act("x" * 300), lease_seconds=LEASE),  # saga_log.step_name: 255
            storage.checkpoint(
                *second, entry=act("reserve"), lease_seconds=LEASE,
                outbox=[OutboxMessage(message_id=taken, topic="t", name="N", payload={})],
            ),
            *(storage.checkpoint(*saga, entry=act("reserve"), lease_seconds=LEASE) for saga in (sagas[3], sagas[4])),
            storage.start_saga(NewSaga(uuid.uuid4(), "order", {"n": 0}), "runner", LEASE),
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(outcomes[0], sa.exc.DBAPIError) and "too long" in str(outcomes[0].orig)
        assert isinstance(outcomes[1], sa.exc.IntegrityError)
        assert outcomes[2:4] == [True, True]
        assert isinstance(outcomes[4], Lease)
        for saga_id, _ in sagas[2:3] + sagas[1:2]:
            assert await storage.get_history(saga_id) == []
        for saga_id, _ in sagas[3:]:
            history = await storage.get_history(saga_id)
            assert history is not None and [e.step_name for e in history] == ["reserve"]
    finally:
        await storage.close()


async def test_a_caller_cancelled_while_its_write_is_made_again_alone_leaves_the_rest_of_the_batch_to_theirs(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed batch each write is made again on its own, one after the other; a caller cancelled while
    its own write is being made again stops waiting, and the writes after it are still made and answered."""
    storage = await storage_on(postgres_url)
    try:
        bad, cancelled, last = await started(storage, 3)
        alone = storage._checkpoint_alone
        callers: dict[uuid.UUID, asyncio.Future[bool]] = {}

        async def cancel_its_caller_meanwhile(saga_id: uuid.UUID, *args: typing.Any) -> bool:
            if saga_id == cancelled[0]:
                callers[saga_id].cancel()  # while its write is made again, alone
            return await alone(saga_id, *args)

        monkeypatch.setattr(storage, "_checkpoint_alone", cancel_its_caller_meanwhile)
        for saga_id, lease in (bad, cancelled, last):
            step = "x" * 300 if saga_id == bad[0] else "reserve"  # saga_log.step_name: 255, so the batch fails
            callers[saga_id] = asyncio.ensure_future(
                storage.checkpoint(saga_id, lease, entry=act(step), lease_seconds=LEASE)
            )
        with pytest.raises(sa.exc.DBAPIError):
            await callers[bad[0]]
        with pytest.raises(asyncio.CancelledError):
            await callers[cancelled[0]]
        assert await callers[last[0]] is True
        history = await storage.get_history(last[0])
        assert history is not None and [e.step_name for e in history] == ["reserve"]
    finally:
        await storage.close()


async def test_a_saga_s_writes_queued_together_commit_one_after_the_other_in_order(postgres_url: str) -> None:
    storage = await storage_on(postgres_url)
    try:
        saga_id = uuid.uuid4()
        start = asyncio.ensure_future(storage.start_saga(NewSaga(saga_id, "order", {"n": 0}), "runner", LEASE))
        lease = Lease(owner="runner", epoch=1)
        steps = [
            asyncio.ensure_future(storage.checkpoint(saga_id, lease, entry=act(step), context={"n": n},
                                                     lease_seconds=LEASE))
            for n, step in enumerate(("reserve", "charge", "ship"), start=1)
        ]
        assert await start == lease
        assert await asyncio.gather(*steps) == [True, True, True]
        history = await storage.get_history(saga_id)
        assert history is not None and [e.step_name for e in history] == ["reserve", "charge", "ship"]
        assert len(set(await xmins(storage, "saga_log", "saga_id", [saga_id]))) == 3  # three batches
        record = await storage.get_saga(saga_id)
        assert record is not None and (record.version, record.context) == (4, {"n": 3})
    finally:
        await storage.close()


async def test_several_entries_of_each_saga_share_the_batch_in_their_order(postgres_url: str) -> None:
    """``checkpoint(entries=...)`` (a failed saga's compensations recorded together): every saga's rows, in its
    order, in the one commit of the batch."""
    storage = await storage_on(postgres_url)
    try:
        sagas = await started(storage, 3)
        failed = StepEntry("ship", "act", SagaStepStatus.FAILED, "refused")
        undone = [StepEntry(step, "compensate", SagaStepStatus.COMPENSATED) for step in ("charge", "reserve")]
        assert await asyncio.gather(*(
            storage.checkpoint(*saga, entry=failed, entries=undone, status=SagaStatus.FAILED, error="refused",
                               lease_seconds=LEASE, release=True)
            for saga in sagas
        )) == [True] * 3
        ids = [saga_id for saga_id, _ in sagas]
        assert len(set(await xmins(storage, "saga_log", "saga_id", ids))) == 1
        for saga_id in ids:
            history = await storage.get_history(saga_id)
            assert history is not None
            assert [(e.step_name, e.action) for e in history] == [
                ("ship", "act"), ("charge", "compensate"), ("reserve", "compensate")
            ]
            record = await storage.get_saga(saga_id)
            assert record is not None and (record.status, record.error, record.owner) == (
                SagaStatus.FAILED, "refused", None
            )
    finally:
        await storage.close()


async def test_a_large_batch_releases_its_sagas_in_two_halves_whose_next_writes_go_out_apart(
    postgres_url: str,
) -> None:
    """The first half of a batch of `_SPLIT_FROM` writes is released a turn of the loop before the second: its
    sagas' next writes are sent while the second half runs, so they commit apart (released at once, all the
    next writes would share one lockstep batch)."""
    count = _group_commit._SPLIT_FROM + 8
    storage = await storage_on(postgres_url)
    try:
        sagas = await started(storage, count)

        async def two_steps(saga_id: uuid.UUID, lease: Lease) -> list[bool]:
            first = await storage.checkpoint(saga_id, lease, entry=act("reserve"), lease_seconds=LEASE)
            second = await storage.checkpoint(saga_id, lease, entry=act("charge"), lease_seconds=LEASE)
            return [first, second]

        assert await asyncio.gather(*(two_steps(*saga) for saga in sagas)) == [[True, True]] * count
        async with storage.engine.connect() as conn:
            rows = (await conn.execute(sa.text(
                "SELECT saga_id, step_name, xmin::text FROM saga_log WHERE saga_id = ANY(:ids)"
            ), {"ids": [saga_id for saga_id, _ in sagas]})).all()
        commit = {(saga_id, step): xmin for saga_id, step, xmin in rows}
        assert len({commit[(saga_id, "reserve")] for saga_id, _ in sagas}) == 1
        half = count // 2
        first = {commit[(saga_id, "charge")] for saga_id, _ in sagas[:half]}
        second = {commit[(saga_id, "charge")] for saga_id, _ in sagas[half:]}
        assert len(first) == 1 and len(second) == 1 and first != second
    finally:
        await storage.close()


async def test_a_saga_whose_next_write_went_out_in_a_later_batch_waits_for_that_one_before_its_third(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saga released with the first half of a large batch sends its next write in a second batch before the
    first batch's end frees its sagas: it stays busy with the second batch, so its third write is not sent
    (on another connection, where it could commit first) until the second batch is back."""
    count = _group_commit._SPLIT_FROM + 8
    storage = await storage_on(postgres_url)
    real = _group_commit.GroupCommit._execute
    sent: list[dict[str, str]] = []
    second_sent, hold = asyncio.Event(), asyncio.Event()

    async def execute(self: _group_commit.GroupCommit, writer: typing.Any, params: dict[str, str]) -> typing.Any:
        sent.append(params)
        if len(sent) == 2:  # the second batch: held on its way to the server
            second_sent.set()
            await hold.wait()
        return await real(self, writer, params)

    try:
        sagas = await started(storage, count)
        monkeypatch.setattr(_group_commit.GroupCommit, "_execute", execute)
        (saga_id, lease), others = sagas[0], sagas[1:]
        own = [asyncio.ensure_future(storage.checkpoint(saga_id, lease, entry=act(step), lease_seconds=LEASE))
               for step in ("reserve", "charge", "ship")]
        rest = [asyncio.ensure_future(storage.checkpoint(*saga, entry=act("reserve"), lease_seconds=LEASE))
                for saga in others]
        await second_sent.wait()
        assert await asyncio.gather(own[0], *rest) == [True] * count  # the first batch is back, all told
        for _ in range(5):  # turns of the loop for the writer: nothing more may be sent
            await asyncio.sleep(0)
        assert len(sent) == 2 and not own[2].done()
        hold.set()
        assert await asyncio.gather(*own) == [True, True, True]
        assert len(sent) == 3
        history = await storage.get_history(saga_id)
        assert history is not None and [e.step_name for e in history] == ["reserve", "charge", "ship"]
    finally:
        hold.set()
        await storage.close()


async def test_a_large_batch_interrupted_between_its_halves_tells_the_second_half_its_writes_were_made(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch committed before its first half was told: an interruption (the loop shutting down) in the turn
    between the halves must not tell the second half that whether its write was made is unknown."""
    count = _group_commit._SPLIT_FROM + 8
    storage = await storage_on(postgres_url)
    real_tell = _group_commit._tell
    halves: list[int] = []

    def tell(batch: list[typing.Any], matched: set[str]) -> None:
        real_tell(batch, matched)
        halves.append(len(batch))
        if len(halves) == 1:  # the first half told: the batch's task is interrupted at its next await
            current = asyncio.current_task()
            assert current is not None
            current.cancel()

    try:
        sagas = await started(storage, count)
        monkeypatch.setattr(_group_commit, "_tell", tell)
        written = await asyncio.gather(
            *(storage.checkpoint(*saga, entry=act("reserve"), lease_seconds=LEASE) for saga in sagas),
            return_exceptions=True,
        )
        assert halves == [count // 2, count - count // 2]
        assert written == [True] * count
        ids = [saga_id for saga_id, _ in sagas]
        assert len(await xmins(storage, "saga_log", "saga_id", ids)) == count
    finally:
        await storage.close()


async def test_close_writes_everything_queued(postgres_url: str) -> None:
    storage = await storage_on(postgres_url)
    sagas = await started(storage, 8)
    queued = [
        asyncio.ensure_future(storage.checkpoint(*saga, entry=act("reserve"), lease_seconds=LEASE, release=True,
                                                 status=SagaStatus.COMPLETED))
        for saga in sagas
    ]
    await asyncio.sleep(0)  # one loop iteration: every call has queued its write (none is sent yet)
    await storage.close()
    assert [task.done() for task in queued] == [True] * 8
    assert [task.result() for task in queued] == [True] * 8
    reader = SqlAlchemySagaStorage.from_url(postgres_url)
    try:
        for saga_id, _ in sagas:
            record = await reader.get_saga(saga_id)
            assert record is not None and (record.status, record.owner) == (SagaStatus.COMPLETED, None)
    finally:
        await reader.close()


async def test_a_caller_cancelled_before_its_batch_is_sent_writes_nothing(postgres_url: str) -> None:
    storage = await storage_on(postgres_url)
    try:
        (kept, dropped) = await started(storage, 2)
        keep = asyncio.ensure_future(storage.checkpoint(*kept, entry=act("reserve"), lease_seconds=LEASE))
        drop = asyncio.ensure_future(storage.checkpoint(*dropped, entry=act("reserve"), lease_seconds=LEASE))
        await asyncio.sleep(0)  # both queued, the writer not yet run
        drop.cancel()
        assert await keep is True
        with pytest.raises(asyncio.CancelledError):
            await drop
        assert await storage.get_history(dropped[0]) == []
    finally:
        await storage.close()


async def backend_waiting_on_a_lock(storage: SqlAlchemySagaStorage) -> int:
    """The pid of the backend of the storage's database that waits for a lock (polled until there is one)."""
    async with storage.engine.connect() as conn:
        for _ in range(1000):
            pid = (await conn.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ))).scalar()
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.01)
    raise AssertionError("no backend waits for the lock")


async def test_a_batch_whose_connection_is_lost_fails_every_write_in_it_and_retries_none(postgres_url: str) -> None:
    """Whether a batch whose connection died committed is unknown: every waiter raises (as a lone write would),
    none is written again on its own (it might have been written twice)."""
    storage = await storage_on(postgres_url)
    # Not the storage's engine: the lost batch disposes its pool, which would leave a connection checked out then
    # to be closed only by the garbage collector.
    locks = create_async_engine(postgres_url)
    try:
        sagas = await started(storage, 4)
        async with locks.connect() as locker:
            # A row lock on one saga holds the batch in flight.
            await locker.execute(sa.text("SELECT 1 FROM saga_executions WHERE id = :id FOR UPDATE"),
                                 {"id": sagas[0][0]})
            calls = asyncio.gather(
                *(storage.checkpoint(*saga, entry=act("reserve"), lease_seconds=LEASE) for saga in sagas),
                return_exceptions=True,
            )
            writer = await backend_waiting_on_a_lock(storage)
            await locker.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": writer})
            outcomes = await calls
            await locker.rollback()
        assert all(isinstance(o, sa.exc.OperationalError) and o.connection_invalidated for o in outcomes), outcomes
        for saga_id, _ in sagas:
            assert await storage.get_history(saga_id) == []
        assert await storage.checkpoint(*sagas[0], entry=act("reserve"), lease_seconds=LEASE)  # a new connection
    finally:
        await storage.close()
        await locks.dispose()


async def test_after_a_lost_connection_no_dead_connection_is_used_again(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart or failover kills every connection: the batch that meets a dead one fails (its outcome unknown),
    and then, as after a lone write's lost connection, the pool is replaced and the other connections the writer
    held are not used again: the next batch goes through."""
    monkeypatch.setattr(_group_commit, "_LINGER_SECONDS", 3600.0)  # the writer keeps its connections throughout
    victim = "cqrs-group-commit-victim"
    storage = await storage_on(
        postgres_url, pool_pre_ping=False, connect_args={"server_settings": {"application_name": victim}}
    )
    locks = create_async_engine(postgres_url)
    try:
        first, second, third = await started(storage, 3)
        async with locks.connect() as locker:
            # A row lock holds the first batch in flight, so the second batch takes a second connection.
            await locker.execute(sa.text("SELECT 1 FROM saga_executions WHERE id = :id FOR UPDATE"), {"id": first[0]})
            held = asyncio.ensure_future(storage.checkpoint(*first, entry=act("reserve"), lease_seconds=LEASE))
            await backend_waiting_on_a_lock(storage)
            assert await storage.checkpoint(*second, entry=act("reserve"), lease_seconds=LEASE)
            await locker.rollback()
        assert await held
        group = storage._group
        assert group is not None and len(group._writers[asyncio.get_running_loop()].idle) == 2
        assert await terminate_backends(postgres_url, victim) >= 2
        with pytest.raises(sa.exc.OperationalError) as lost:
            await storage.checkpoint(*third, entry=act("reserve"), lease_seconds=LEASE)
        assert lost.value.connection_invalidated
        assert await storage.checkpoint(*third, entry=act("reserve"), lease_seconds=LEASE)
        history = await storage.get_history(third[0])
        assert history is not None and [e.step_name for e in history] == ["reserve"]
    finally:
        await storage.close()
        await locks.dispose()


async def test_checkpoints_that_keep_the_status_are_hot_updates_in_a_batch(postgres_url: str) -> None:
    """As without group commit (docs/storage.md), counted by PostgreSQL: one pooled connection, so the
    statistics flush below runs on the backend that made the writes."""
    storage = await storage_on(postgres_url, pool_size=1, max_overflow=0)
    try:
        sagas = await started(storage, 3)

        async def updates() -> tuple[int, int]:
            async with storage.engine.connect() as conn:  # waits until the writer gave the connection back
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await auto.exec_driver_sql("SELECT pg_stat_force_next_flush()")
                row = (await auto.exec_driver_sql(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'saga_executions'"
                )).one()
            return int(row[0]), int(row[1])

        before = await updates()
        for step in ("one", "two"):
            assert await asyncio.gather(*(
                storage.checkpoint(*saga, entry=act(step), context={"s": step}, lease_seconds=LEASE) for saga in sagas
            )) == [True] * 3
        assert await asyncio.gather(*(
            storage.checkpoint(*saga, entry=act("three"), status=SagaStatus.COMPLETED, lease_seconds=LEASE,
                               release=True) for saga in sagas
        )) == [True] * 3
        after = await updates()
        assert (after[0] - before[0], after[1] - before[1]) == (9, 6)
    finally:
        await storage.close()


# -- statement listeners do not turn the fast path off ------------------------------------------------


async def test_statement_listeners_leave_group_commit_on_the_driver_and_the_log_says_so(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that stays (a statement counter on ``before_cursor_execute``) and one added and removed: the
    batches still run on the asyncpg connection (the listener does not see them, as the INFO log says), and
    still share commits."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    engine = create_async_engine(postgres_url)
    seen: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    def forget(*args: object) -> None:
        return None

    sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    sa.event.listen(engine.sync_engine, "before_cursor_execute", forget)
    sa.event.remove(engine.sync_engine, "before_cursor_execute", forget)
    try:
        with caplog.at_level(logging.INFO, logger="cqrs.saga.storage"):
            storage = SqlAlchemySagaStorage(async_sessionmaker(engine), group_commit=True)
        assert storage.fast_path and storage.group_commit
        assert any("fast path is on" in r.getMessage() and "events" in r.getMessage() for r in caplog.records)
        await storage.create_tables()
        seen.clear()
        sagas = await started(storage, 4)
        assert await asyncio.gather(*(
            storage.checkpoint(*saga, entry=act("one"), lease_seconds=LEASE) for saga in sagas
        )) == [True] * 4
        assert seen == []  # on the driver: SQLAlchemy's statement events do not see the batches
        ids = [saga_id for saga_id, _ in sagas]
        assert len(set(await xmins(storage, "saga_log", "saga_id", ids))) == 1
        await storage.close()

        # fast_path=False: every batch through SQLAlchemy, so the listener sees each one.
        routed = SqlAlchemySagaStorage(async_sessionmaker(engine), fast_path=False, group_commit=True)
        seen.clear()
        sagas = await started(routed, 4)
        assert await asyncio.gather(*(
            routed.checkpoint(*saga, entry=act("one"), lease_seconds=LEASE) for saga in sagas
        )) == [True] * 4
        assert len(seen) == 2 and all(statement.lstrip().startswith("WITH b AS") for statement in seen)
        await routed.close()
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)
        await engine.dispose()
