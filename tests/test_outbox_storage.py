"""The outbox storage contract: one suite over the memory, SQLite, PostgreSQL and MariaDB storages.

Rows are written only with a start or a checkpoint that committed; claims
hand out due, unleased rows, each the earliest unpublished row of its saga;
marks are conditional on the claim's owner; purges delete published rows
only. What holds only for the SQL storages is in test_outbox_sql.py.
"""

from __future__ import annotations

import asyncio
import datetime
import typing
import uuid

import pytest

from cqrs.outbox.models import OutboxStatus
from cqrs.outbox.protocol import OutboxStorage
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.models import Lease, NewSaga
from outbox_helpers import (
    LEASE,
    Storage,
    advance,
    another,
    claimed,
    done,
    message,
    names,
    open_storage,
    outbox_count,
    publish_all,
    started,
)

HOUR = datetime.timedelta(hours=1)


@pytest.fixture
async def storage(storage_url: str) -> typing.AsyncIterator[Storage]:
    store = await open_storage(storage_url)
    yield store
    await store.close()


async def test_both_storages_implement_the_outbox_protocol(storage: Storage) -> None:
    assert isinstance(storage, OutboxStorage)


# -- rows written with starts and checkpoints ---------------------------------------------------------


async def test_a_start_writes_its_messages_in_order_as_pending_rows(storage: Storage) -> None:
    first, second = message("Placed", order="o-1", lines=[{"sku": "ü-1", "qty": 2}]), message("Reserved")
    saga_id, _ = await started(storage, first, second)

    rows = await storage.list_outbox()
    assert [(r.message_id, r.saga_id, r.topic, r.name, r.status) for r in rows] == [
        (first.message_id, saga_id, "orders", "Placed", OutboxStatus.PENDING),
        (second.message_id, saga_id, "orders", "Reserved", OutboxStatus.PENDING),
    ]
    assert rows[0].seq < rows[1].seq
    assert rows[0].payload == {"order": "o-1", "lines": [{"sku": "ü-1", "qty": 2}]}
    assert rows[0].headers == {"message-id": str(first.message_id)}
    assert (rows[0].attempts, rows[0].error, rows[0].published_at, rows[0].next_attempt_at) == (0, None, None, None)
    created = rows[0].created_at
    assert created is not None and created.utcoffset() == datetime.timedelta(0)
    assert await storage.outbox_backlog() == 2


async def test_a_start_whose_id_is_taken_writes_no_row(storage: Storage) -> None:
    saga_id, _ = await started(storage, message("First"))
    again = NewSaga(saga_id, "order", {"n": 1}, outbox=[message("Second")])
    assert await storage.start_saga(again, "runner-b", LEASE) is None
    assert await names(storage) == ["First"]


async def test_a_checkpoint_writes_its_messages_with_its_entry_and_context(storage: Storage) -> None:
    saga_id, lease = await started(storage)
    assert await storage.checkpoint(
        saga_id, lease, entry=done("reserve"), context={"n": 1}, lease_seconds=LEASE,
        outbox=[message("Reserved"), message("Held")],
    )
    assert await storage.checkpoint(
        saga_id, lease, entry=None, status=SagaStatus.COMPLETED, release=True, lease_seconds=LEASE,
        outbox=[message("Done")],
    )
    assert await names(storage, saga_id=saga_id) == ["Reserved", "Held", "Done"]
    record = await storage.get_saga(saga_id)
    assert record is not None
    assert (record.context, record.status, record.version, record.owner) == ({"n": 1}, SagaStatus.COMPLETED, 3, None)
    history = await storage.get_history(saga_id)
    assert history is not None and [e.step_name for e in history] == ["reserve"]


async def test_a_fenced_checkpoint_writes_no_row(storage: Storage) -> None:
    saga_id, lease = await started(storage)
    await advance(storage, LEASE + 1)
    claim = await storage.claim_saga(saga_id, "runner-b", LEASE)
    assert claim is not None and claim.lease is not None

    for stale in (lease, Lease("runner-c", claim.lease.epoch)):
        assert not await storage.checkpoint(
            saga_id, stale, entry=done("reserve"), context={"n": 9}, lease_seconds=LEASE, outbox=[message("Lost")]
        )
    assert not await storage.checkpoint(
        uuid.uuid4(), lease, entry=None, lease_seconds=LEASE, outbox=[message("Unknown")]
    )
    assert await outbox_count(storage) == 0
    assert await storage.get_history(saga_id) == []
    record = await storage.get_saga(saga_id)
    assert record is not None and record.context == {"n": 0}


async def test_a_checkpoint_whose_message_id_is_taken_writes_nothing_at_all(storage: Storage) -> None:
    """The message id is unique: a second row with it fails the whole commit (saga row, log row, messages)."""
    saga_id, lease = await started(storage)
    first = message("First")
    assert await storage.checkpoint(saga_id, lease, entry=done("one"), lease_seconds=LEASE, outbox=[first])
    version = (await storage.get_saga(saga_id)).version  # type: ignore[union-attr]

    with pytest.raises(Exception):  # noqa: B017 - IntegrityError on SQL, ValueError on memory
        await storage.checkpoint(
            saga_id, lease, entry=done("two"), context={"n": 2}, lease_seconds=LEASE,
            outbox=[message("Fresh"), first],
        )
    with pytest.raises(Exception):  # noqa: B017 - the same id twice in one checkpoint
        twice = message("Twice")
        await storage.checkpoint(saga_id, lease, entry=None, lease_seconds=LEASE, outbox=[twice, twice])

    record = await storage.get_saga(saga_id)
    assert record is not None and (record.version, record.context) == (version, {"n": 0})
    assert [e.step_name for e in await storage.get_history(saga_id) or []] == ["one"]
    assert await names(storage) == ["First"]
    # The saga goes on as if the failed checkpoints had not been tried.
    assert await storage.checkpoint(saga_id, lease, entry=done("two"), lease_seconds=LEASE, outbox=[message("Next")])
    assert await names(storage) == ["First", "Next"]


async def test_a_start_whose_message_id_is_taken_stores_nothing(storage: Storage) -> None:
    taken = message("Taken")
    await started(storage, taken)
    fresh = uuid.uuid4()
    with pytest.raises(Exception):  # noqa: B017 - IntegrityError on SQL, ValueError on memory
        await storage.start_saga(NewSaga(fresh, "order", {}, outbox=[message("Other"), taken]), "runner-a", LEASE)
    assert await storage.get_saga(fresh) is None
    assert await names(storage) == ["Taken"]


async def test_checkpoints_without_messages_write_no_row(storage: Storage) -> None:
    saga_id, lease = await started(storage)
    assert await storage.checkpoint(saga_id, lease, entry=done("one"), lease_seconds=LEASE)
    assert await storage.checkpoint(saga_id, lease, entry=done("two"), lease_seconds=LEASE, outbox=[])
    assert await outbox_count(storage) == 0
    assert await storage.outbox_backlog() == 0


# -- claims ----------------------------------------------------------------------------------------


async def test_a_claim_takes_only_the_earliest_unpublished_row_of_each_saga(storage: Storage) -> None:
    a, _ = await started(storage, message("a1"), message("a2"), message("a3"))
    await started(storage, message("b1"))
    c, c_lease = await started(storage)
    assert await storage.checkpoint(c, c_lease, entry=None, lease_seconds=LEASE, outbox=[message("c1"), message("c2")])

    first = await storage.claim_outbox("relay-1", LEASE, limit=10)
    assert claimed(first) == ["a1", "b1", "c1"]
    assert all(r.status is OutboxStatus.PENDING and r.owner == "relay-1" for r in first)
    assert all(r.lease_expires_at is not None and r.created_at is not None
               and r.lease_expires_at - r.created_at >= datetime.timedelta(seconds=LEASE - 1) for r in first)
    # Claimed rows are leased, and hold back their sagas' later rows.
    assert await storage.claim_outbox("relay-2", LEASE, limit=10) == []

    assert await storage.mark_published("relay-1", [first[0].seq, first[2].seq]) == 2
    assert claimed(await storage.claim_outbox("relay-2", LEASE, limit=10)) == ["a2", "c2"]
    assert await names(storage, status=OutboxStatus.PUBLISHED) == ["a1", "c1"]
    assert await storage.outbox_backlog() == 4
    assert [r.saga_id for r in await storage.list_outbox(saga_id=a)] == [a, a, a]


async def test_a_claim_takes_at_most_limit_rows_oldest_first(storage: Storage) -> None:
    for n in range(5):
        await started(storage, message(f"m{n}"))
    assert claimed(await storage.claim_outbox("relay", LEASE, limit=2)) == ["m0", "m1"]
    assert claimed(await storage.claim_outbox("relay", LEASE, limit=2)) == ["m2", "m3"]
    assert await storage.claim_outbox("relay", LEASE, limit=0) == []
    assert claimed(await storage.claim_outbox("relay", LEASE, limit=2)) == ["m4"]


async def test_an_expired_claim_is_taken_over_and_the_former_owner_cannot_mark_it(storage: Storage) -> None:
    await started(storage, message("m"), message("after"))
    [row] = await storage.claim_outbox("relay-1", 10, limit=10)
    await advance(storage, 5)
    assert await storage.claim_outbox("relay-2", LEASE, limit=10) == []
    await advance(storage, 6)

    [again] = await storage.claim_outbox("relay-2", LEASE, limit=10)
    assert (again.seq, again.message_id) == (row.seq, row.message_id)
    assert await storage.mark_published("relay-1", [row.seq]) == 0
    assert not await storage.mark_failed("relay-1", row.seq, "late", retry_in=1.0)
    assert await storage.mark_published("relay-2", [row.seq]) == 1
    assert await storage.mark_published("relay-2", [row.seq]) == 0  # marked once
    assert claimed(await storage.claim_outbox("relay-1", LEASE, limit=10)) == ["after"]


async def test_a_failed_row_is_retried_after_its_delay_and_holds_back_its_saga(storage: Storage) -> None:
    await started(storage, message("flaky"), message("next"))
    await started(storage, message("other"))
    flaky, other = await storage.claim_outbox("relay", LEASE, limit=10)
    assert await storage.mark_failed("relay", flaky.seq, "ConnectionError: broker down", retry_in=60.0)
    assert await storage.mark_published("relay", [other.seq]) == 1

    assert await storage.claim_outbox("relay", LEASE, limit=10) == []  # not due; "next" waits behind it
    [row] = await storage.list_outbox(status=OutboxStatus.PENDING, limit=1)
    assert (row.name, row.attempts, row.error) == ("flaky", 1, "ConnectionError: broker down")
    assert row.next_attempt_at is not None and row.created_at is not None
    assert datetime.timedelta(seconds=59) <= row.next_attempt_at - row.created_at <= datetime.timedelta(seconds=61)
    assert await storage.outbox_backlog() == 2

    await advance(storage, 61)
    [retried] = await storage.claim_outbox("relay", LEASE, limit=10)
    assert (retried.name, retried.attempts) == ("flaky", 1)
    assert await storage.mark_failed("relay", retried.seq, "ConnectionError: again", retry_in=0.0)
    [third] = await storage.claim_outbox("relay", LEASE, limit=10)
    assert (third.name, third.attempts, third.error) == ("flaky", 2, "ConnectionError: again")


async def test_a_parked_row_waits_for_an_operator_with_its_saga_behind_it(storage: Storage) -> None:
    poison = message("poison")
    await started(storage, poison, message("after"))
    await started(storage, message("other"))
    row, other = await storage.claim_outbox("relay", LEASE, limit=10)
    assert await storage.mark_failed("relay", row.seq, "ValueError: cannot encode", retry_in=None)
    assert await storage.mark_published("relay", [other.seq]) == 1

    await advance(storage, 3600)
    assert await storage.claim_outbox("relay", LEASE, limit=10) == []
    [parked] = await storage.list_outbox(status=OutboxStatus.PARKED)
    assert (parked.message_id, parked.attempts, parked.error) == (poison.message_id, 1, "ValueError: cannot encode")
    assert await storage.outbox_backlog() == 1  # "after"; the parked row is not counted

    assert await storage.requeue_outbox(poison.message_id)
    assert await publish_all(storage) == ["poison", "after"]
    assert not await storage.requeue_outbox(poison.message_id)  # published: nothing to requeue
    assert not await storage.requeue_outbox(uuid.uuid4())


async def test_requeue_makes_a_waiting_row_due_now_and_leaves_a_claim_alone(storage: Storage) -> None:
    waiting = message("waiting")
    await started(storage, waiting)
    [row] = await storage.claim_outbox("relay-1", LEASE, limit=10)
    assert await storage.mark_failed("relay-1", row.seq, "TimeoutError: ", retry_in=3600.0)
    assert await storage.requeue_outbox(waiting.message_id)
    [again] = await storage.claim_outbox("relay-2", LEASE, limit=10)
    assert again.attempts == 0

    # Requeueing a claimed row does not take it from its relay.
    assert await storage.requeue_outbox(waiting.message_id)
    assert await storage.claim_outbox("relay-3", LEASE, limit=10) == []
    assert await storage.mark_published("relay-2", [again.seq]) == 1


async def test_marks_by_another_owner_change_nothing(storage: Storage) -> None:
    await started(storage, message("m"))
    [row] = await storage.claim_outbox("relay-1", LEASE, limit=10)
    assert await storage.mark_published("relay-2", [row.seq]) == 0
    assert not await storage.mark_failed("relay-2", row.seq, "nope", retry_in=None)
    assert await storage.mark_published("relay-1", []) == 0
    assert await storage.mark_published("relay-1", [row.seq, row.seq + 1000]) == 1
    [stored] = await storage.list_outbox()
    assert (stored.status, stored.attempts, stored.error) == (OutboxStatus.PUBLISHED, 0, None)
    assert (stored.owner, stored.lease_expires_at) == (None, None)
    assert stored.published_at is not None


async def test_concurrent_claimers_never_share_a_row_and_keep_each_saga_in_order(storage: Storage) -> None:
    sagas = 30
    for n in range(sagas):
        await started(storage, message(f"s{n}-1"), message(f"s{n}-2"))
    others = [another(storage) for _ in range(4)]
    published: list[str] = []
    go = asyncio.Event()

    async def relay(store: Storage, owner: str) -> list[str]:
        await go.wait()
        mine: list[str] = []
        while True:
            rows = await store.claim_outbox(owner, LEASE, limit=7)
            if not rows:
                if await store.outbox_backlog() == 0:
                    return mine
                await asyncio.sleep(0)  # a row is held by another relay: let it mark
                continue
            mine += claimed(rows)
            published.extend(claimed(rows))
            assert await store.mark_published(owner, [r.seq for r in rows]) == len(rows)

    try:
        tasks = [asyncio.create_task(relay(store, f"relay-{n}")) for n, store in enumerate(others)]
        go.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    finally:
        for store in others:
            if store is not storage:
                await store.close()
    everything = [name for mine in results for name in mine]
    assert sorted(everything) == sorted(f"s{n}-{k}" for n in range(sagas) for k in (1, 2))  # each exactly once
    for n in range(sagas):
        assert published.index(f"s{n}-1") < published.index(f"s{n}-2")


# -- listing and purging ----------------------------------------------------------------------------------


async def test_list_outbox_filters_by_status_and_saga_and_limits(storage: Storage) -> None:
    a, _ = await started(storage, message("a1"), message("a2"))
    b, _ = await started(storage, message("b1"))
    [a1, b1] = await storage.claim_outbox("relay", LEASE, limit=10)
    await storage.mark_published("relay", [a1.seq])
    await storage.mark_failed("relay", b1.seq, "boom", retry_in=None)

    assert await names(storage) == ["a1", "a2", "b1"]
    assert await names(storage, status=OutboxStatus.PENDING) == ["a2"]
    assert await names(storage, status=OutboxStatus.PARKED) == ["b1"]
    assert await names(storage, saga_id=a) == ["a1", "a2"]
    assert await names(storage, saga_id=b, status=OutboxStatus.PUBLISHED) == []
    assert [r.name for r in await storage.list_outbox(limit=2)] == ["a1", "a2"]
    assert await storage.list_outbox(limit=0) == []
    assert await storage.list_outbox(saga_id=uuid.uuid4()) == []


async def test_purge_outbox_deletes_old_published_rows_only(storage: Storage) -> None:
    await started(storage, message("old1"))
    await started(storage, message("old2"))
    await started(storage, message("parked"))
    await started(storage, message("pending"))
    rows = await storage.claim_outbox("relay", LEASE, limit=3)
    await storage.mark_published("relay", [rows[0].seq, rows[1].seq])
    await storage.mark_failed("relay", rows[2].seq, "boom", retry_in=None)
    await advance(storage, 7200)
    await started(storage, message("young"))
    assert await publish_all(storage) == ["pending", "young"]
    await advance(storage, 1)

    assert await storage.purge_outbox(older_than=2 * HOUR + datetime.timedelta(minutes=1)) == 0
    assert await storage.purge_outbox(older_than=HOUR, limit=1) == 1
    assert await names(storage) == ["old2", "parked", "pending", "young"]  # the oldest went first
    assert await storage.purge_outbox(older_than=HOUR) == 1
    assert await names(storage) == ["parked", "pending", "young"]
    assert await storage.purge_outbox(older_than=datetime.timedelta(0), limit=0) == 0
    assert await storage.purge_outbox(older_than=datetime.timedelta(0)) == 2
    assert await names(storage) == ["parked"]
    with pytest.raises(ValueError, match="negative"):
        await storage.purge_outbox(older_than=-HOUR)


async def test_purge_sagas_takes_their_published_rows_and_leaves_the_unpublished(storage: Storage) -> None:
    done_saga, done_lease = await started(storage, message("done-1"))
    assert await storage.checkpoint(
        done_saga, done_lease, entry=done("one"), status=SagaStatus.COMPLETED, release=True, lease_seconds=LEASE,
        outbox=[message("done-2")],
    )
    late_saga, late_lease = await started(storage, message("late-1"))
    assert await storage.checkpoint(
        late_saga, late_lease, entry=done("one"), status=SagaStatus.COMPLETED, release=True, lease_seconds=LEASE,
        outbox=[message("late-2")],
    )
    [d1, l1] = await storage.claim_outbox("relay", LEASE, limit=10)
    await storage.mark_published("relay", [d1.seq, l1.seq])
    [d2, l2] = await storage.claim_outbox("relay", LEASE, limit=10)
    await storage.mark_published("relay", [d2.seq])  # late-2 stays claimed, unpublished
    kept, _ = await started(storage, message("kept"))
    await advance(storage, 7200)

    assert await storage.purge_sagas(older_than=HOUR) == 2
    assert await storage.get_saga(done_saga) is None and await storage.get_saga(late_saga) is None
    assert await names(storage) == ["late-2", "kept"]
    assert await storage.mark_published("relay", [l2.seq]) == 1  # it is still published, and then stays
    assert await storage.get_saga(kept) is not None
