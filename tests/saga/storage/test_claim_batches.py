"""`ClaimBatches`: one-saga claims made at once share a statement (the SQL storage's PostgreSQL claims).

The statement is replaced by a fake `send` whose answers the test releases, so each test says exactly
which claims went together; the contract suite runs the real statement on every database.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from cqrs.saga.storage.sqlalchemy._claim_batches import MOST_IN_FLIGHT, ClaimBatches, Key

KEY: Key = ("runner-a", 30.0)


class FakeSend:
    """Records each batch sent and answers it when the test says so (or fails it)."""

    def __init__(self) -> None:
        self.batches: list[tuple[Key, list[uuid.UUID]]] = []
        self.answers: list[asyncio.Future[None]] = []

    async def __call__(self, key: Key, saga_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, uuid.UUID]]:
        self.batches.append((key, list(saga_ids)))
        answered = asyncio.get_running_loop().create_future()
        self.answers.append(answered)
        await answered
        return {saga_id: ("row", saga_id) for saga_id in saga_ids if saga_id.int % 7}

    async def until_sent(self, count: int) -> None:
        while len(self.batches) < count:
            await asyncio.sleep(0)


async def test_claims_made_at_once_go_in_one_batch_and_each_gets_its_row() -> None:
    send = FakeSend()
    batches = ClaimBatches(send)
    ids = [uuid.UUID(int=n) for n in range(1, 11)]
    claims = [asyncio.ensure_future(batches.claim(KEY, saga_id)) for saga_id in ids]
    await send.until_sent(1)
    send.answers[0].set_result(None)
    rows = await asyncio.gather(*claims)
    assert send.batches == [(KEY, ids)]
    assert rows == [("row", saga_id) if saga_id.int % 7 else None for saga_id in ids]


async def test_claims_made_while_batches_are_in_flight_go_together_next() -> None:
    send = FakeSend()
    batches = ClaimBatches(send)
    first = []
    for n in range(1, 1 + MOST_IN_FLIGHT):
        first.append(asyncio.ensure_future(batches.claim(KEY, uuid.UUID(int=n))))
        await send.until_sent(n)  # each alone: sent before the next claim was made
    later = [asyncio.ensure_future(batches.claim(KEY, uuid.UUID(int=n))) for n in (20, 30, 40)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(send.batches) == MOST_IN_FLIGHT  # at most that many in flight: the later ones wait
    send.answers[0].set_result(None)
    await send.until_sent(MOST_IN_FLIGHT + 1)
    assert send.batches[-1] == (KEY, [uuid.UUID(int=n) for n in (20, 30, 40)])
    for answered in send.answers[1:]:
        answered.set_result(None)
    await asyncio.gather(*first, *later)


async def test_a_saga_is_never_twice_in_one_batch_and_claims_by_other_owners_are_apart() -> None:
    send = FakeSend()
    batches = ClaimBatches(send)
    saga_id = uuid.UUID(int=1)
    other: Key = ("runner-b", 30.0)
    claims = [
        asyncio.ensure_future(batches.claim(KEY, saga_id)),
        asyncio.ensure_future(batches.claim(KEY, saga_id)),
        asyncio.ensure_future(batches.claim(other, uuid.UUID(int=2))),
    ]
    await send.until_sent(2)
    assert sorted(send.batches) == sorted([(KEY, [saga_id]), (other, [uuid.UUID(int=2)])])
    for answered in send.answers:
        answered.set_result(None)
    await send.until_sent(3)  # the second claim of the saga, after the first was answered
    assert send.batches[2] == (KEY, [saga_id])
    send.answers[2].set_result(None)
    await asyncio.gather(*claims)


async def test_a_claim_cancelled_before_its_batch_is_sent_is_left_out() -> None:
    send = FakeSend()
    batches = ClaimBatches(send)
    kept = asyncio.ensure_future(batches.claim(KEY, uuid.UUID(int=1)))
    dropped = asyncio.ensure_future(batches.claim(KEY, uuid.UUID(int=2)))
    await asyncio.sleep(0)  # both queued
    dropped.cancel()
    await send.until_sent(1)
    assert send.batches == [(KEY, [uuid.UUID(int=1)])]
    send.answers[0].set_result(None)
    assert await kept == ("row", uuid.UUID(int=1))


async def test_a_failing_statement_fails_the_claims_it_carried_and_the_next_batch_goes() -> None:
    send = FakeSend()
    batches = ClaimBatches(send)
    failing = asyncio.ensure_future(batches.claim(KEY, uuid.UUID(int=1)))
    await send.until_sent(1)
    send.answers[0].set_exception(ConnectionError("gone"))
    with pytest.raises(ConnectionError, match="gone"):
        await failing
    fine = asyncio.ensure_future(batches.claim(KEY, uuid.UUID(int=2)))
    await send.until_sent(2)
    send.answers[1].set_result(None)
    assert await fine == ("row", uuid.UUID(int=2))
