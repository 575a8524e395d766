"""What an inbox is: transactions, and in them a record of each message id a consumer handled."""

from __future__ import annotations

import contextlib
import datetime
import typing

__all__ = ["Inbox"]

Tx = typing.TypeVar("Tx")


@typing.runtime_checkable
class Inbox(typing.Protocol[Tx]):
    """Records message ids per consumer, in transactions that also carry the handler's writes.

    ``Tx`` is what a transaction is: an SQLAlchemy ``AsyncConnection`` for
    `cqrs.inbox.sqlalchemy.SqlAlchemyInbox`, a `cqrs.inbox.MemoryInboxTransaction`
    for `cqrs.inbox.MemoryInbox`.
    """

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Tx]:
        """A transaction: committed when the block ends, rolled back (nothing recorded) when it raises."""

    async def record(self, tx: Tx, consumer: str, message_id: str) -> bool:
        """Record that ``consumer`` handles ``message_id`` in ``tx``; False if it was handled already.

        While another transaction holds an uncommitted record of the same id,
        this waits for it: False once it commits, True (recorded here) if it
        rolls back.
        """

    async def handled(self, consumer: str, message_id: str) -> bool:
        """Whether a committed record says ``consumer`` handled ``message_id``."""

    async def purge(self, *, older_than: datetime.timedelta, limit: int = 1000) -> int:
        """Forget up to ``limit`` records older than ``older_than``; returns how many.

        Keep records longer than any redelivery can come (the brokers' retention
        and redelivery windows): a message redelivered after its record was
        purged is handled again.
        """
