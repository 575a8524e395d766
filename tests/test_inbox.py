"""The inbox: each message id handled once per consumer, its record committed with the handler's own writes.

On the memory twin, SQLite, PostgreSQL and MariaDB. The SQL handler writes a
row of its own in the inbox's transaction: a handler that raised leaves
neither its row nor the record, so its redelivery runs it again.
"""

from __future__ import annotations

import asyncio
import datetime
import typing
import uuid

import pytest
import sqlalchemy as sa

from cqrs.inbox import Inbox, MemoryInbox, idempotent
from cqrs.inbox.sqlalchemy import SqlAlchemyInbox, inbox_table
from cqrs.message_brokers.consumer import Received, Settlement, settle

business = sa.MetaData()
orders = sa.Table("inbox_test_orders", business, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                  sa.Column("note", sa.String(100), nullable=False))


class Shop:
    """An inbox and the writes a handler makes in its transactions (a table on SQL, a list in memory)."""

    def __init__(self, inbox: Inbox[typing.Any]) -> None:
        self.inbox = inbox
        self.memory_writes: list[str] = []

    async def write(self, tx: typing.Any, note: str) -> None:
        if isinstance(self.inbox, SqlAlchemyInbox):
            await tx.execute(orders.insert().values(note=note))
        else:
            self.memory_writes.append(note)

    async def written(self) -> list[str]:
        if isinstance(self.inbox, SqlAlchemyInbox):
            async with self.inbox.engine.connect() as conn:
                return list((await conn.scalars(sa.select(orders.c.note).order_by(orders.c.id))).all())
        return list(self.memory_writes)


@pytest.fixture
async def shop(storage_url: str) -> typing.AsyncIterator[Shop]:
    if storage_url == "memory://":
        yield Shop(MemoryInbox())
        return
    inbox = SqlAlchemyInbox(storage_url)
    await inbox.create_tables()
    async with inbox.engine.begin() as conn:
        await conn.run_sync(business.create_all)
    try:
        yield Shop(inbox)
    finally:
        await inbox.close()


def received(message_id: str | None = None, note: str = "n") -> Received:
    return Received(message_id or str(uuid.uuid4()), "orders", note.encode(), {})


async def test_a_message_id_is_handled_once_per_consumer(shop: Shop) -> None:
    async def bill(message: Received, tx: typing.Any) -> None:
        await shop.write(tx, f"bill {message.body.decode()}")

    async def ship(message: Received, tx: typing.Any) -> None:
        await shop.write(tx, f"ship {message.body.decode()}")

    billing, shipping = idempotent(shop.inbox, "billing", bill), idempotent(shop.inbox, "shipping", ship)
    first, second = received(note="a"), received(note="b")
    for message in (first, first, second, first):  # duplicates under the same id
        await billing(message)
    await shipping(first)
    assert sorted(await shop.written()) == ["bill a", "bill b", "ship a"]
    assert await shop.inbox.handled("billing", first.message_id)
    assert not await shop.inbox.handled("shipping", second.message_id)


async def test_a_handler_that_raised_recorded_nothing_and_its_redelivery_runs_again(shop: Shop) -> None:
    attempts: list[int] = []

    async def flaky(message: Received, tx: typing.Any) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            if isinstance(shop.inbox, SqlAlchemyInbox):
                await shop.write(tx, "half-done")  # rolled back with the record
            raise ConnectionError("the downstream service is down")
        await shop.write(tx, "done")

    handler = idempotent(shop.inbox, "billing", flaky)
    message = received()
    with pytest.raises(ConnectionError):
        await handler(message)
    assert not await shop.inbox.handled("billing", message.message_id)
    await handler(message)
    await handler(message)
    assert len(attempts) == 2
    assert await shop.written() == ["done"]


async def test_concurrent_copies_of_one_message_run_the_handler_once(shop: Shop) -> None:
    runs: list[str] = []

    async def slow(message: Received, tx: typing.Any) -> None:
        runs.append(message.message_id)
        await asyncio.sleep(0)  # let the other copies reach their record while this transaction is open
        await shop.write(tx, "once")

    handler = idempotent(shop.inbox, "billing", slow)
    message = received()
    await asyncio.gather(*(handler(message) for _ in range(10)))
    assert runs == [message.message_id]
    assert await shop.written() == ["once"]


async def test_purged_records_are_forgotten(shop: Shop) -> None:
    async def noop(message: Received, tx: typing.Any) -> None:
        pass

    handler = idempotent(shop.inbox, "billing", noop)
    kept = received()
    await handler(kept)
    assert await shop.inbox.purge(older_than=datetime.timedelta(days=1)) == 0
    assert await shop.inbox.purge(older_than=datetime.timedelta(0)) == 1
    assert not await shop.inbox.handled("billing", kept.message_id)
    with pytest.raises(ValueError):
        await shop.inbox.purge(older_than=datetime.timedelta(seconds=-1))


async def test_message_ids_longer_than_the_key_column_are_handled_once_each(shop: Shop) -> None:
    """A producer's long ids (over the SQL column's 200 characters) are taken, told apart and deduplicated:
    refusing them made such a message fail, and be redelivered, forever."""
    first, second = "x" * 200 + "-first", "x" * 200 + "-second"  # the same first 200 characters

    async def handler(message: Received, tx: typing.Any) -> None:
        await shop.write(tx, message.message_id[-6:])

    handle = idempotent(shop.inbox, "billing", handler)
    for message_id in (first, second, first, "x" * 200):
        await handle(received(message_id))
    assert await shop.written() == ["-first", "second", "xxxxxx"]
    assert await shop.inbox.handled("billing", first) and await shop.inbox.handled("billing", second)
    assert not await shop.inbox.handled("billing", "x" * 200 + "-third")


async def test_message_ids_with_a_nul_or_a_lone_surrogate_are_handled_once_each(shop: Shop) -> None:
    """Ids a text column cannot hold as they are (PostgreSQL refuses NUL; no driver encodes a lone surrogate)
    are still taken and told apart; refusing them made such a message fail, and be redelivered, forever."""
    ids = ["order\x00one", "order\x00two", "order\ud800"]

    async def handler(message: Received, tx: typing.Any) -> None:
        await shop.write(tx, str(ids.index(message.message_id)))

    handle = idempotent(shop.inbox, "billing", handler)
    for message_id in (*ids, *ids):
        await handle(received(message_id))
    assert await shop.written() == ["0", "1", "2"]
    assert all([await shop.inbox.handled("billing", message_id) for message_id in ids])


async def test_a_message_without_an_id_is_refused_for_good_and_its_handler_not_run(shop: Shop) -> None:
    """It cannot be told from other messages; failing it (the inbox refuses an empty id) had it redelivered
    forever."""
    runs: list[Received] = []

    async def handler(message: Received, tx: typing.Any) -> None:
        runs.append(message)

    anonymous = Received("", "orders", b"n", {})
    assert await settle(idempotent(shop.inbox, "billing", handler), anonymous) is Settlement.REJECT
    assert runs == []
    with pytest.raises(ValueError, match="must not be empty"):
        async with shop.inbox.transaction() as tx:
            await shop.inbox.record(tx, "billing", "")


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
async def test_the_sql_inbox_refuses_ids_its_key_cannot_hold(shop: Shop) -> None:
    assert isinstance(shop.inbox, SqlAlchemyInbox)
    async with shop.inbox.transaction() as tx:
        with pytest.raises(ValueError, match="must not be empty"):
            await shop.inbox.record(tx, "billing", "")
        with pytest.raises(ValueError, match="consumer"):
            await shop.inbox.record(tx, "", "id")
        with pytest.raises(ValueError, match="consumer must be 1 to 200"):
            await shop.inbox.record(tx, "c" * 201, "id")
    async with shop.inbox.engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(inbox_table)) == 0


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
async def test_the_sql_inbox_records_in_an_orm_session_too(shop: Shop) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    assert isinstance(shop.inbox, SqlAlchemyInbox)
    sessions = async_sessionmaker(shop.inbox.engine)
    async with sessions() as session, session.begin():
        assert await shop.inbox.record(session, "billing", "m-1")
        await session.execute(orders.insert().values(note="with the session"))
    async with sessions() as session, session.begin():
        assert not await shop.inbox.record(session, "billing", "m-1")
    assert await shop.written() == ["with the session"]




def test_the_sql_inbox_without_sqlalchemy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    monkeypatch.delitem(sys.modules, "cqrs.inbox.sqlalchemy", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'cqrs-saga\[sqlalchemy\]'"):
        importlib.import_module("cqrs.inbox.sqlalchemy")
