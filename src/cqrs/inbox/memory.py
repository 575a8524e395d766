"""The in-memory inbox: `MemoryInbox`, the twin of the SQL one (same waiting, same rollback)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import typing

__all__ = ["MemoryInbox", "MemoryInboxTransaction"]

Key = tuple[str, str]


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class MemoryInboxTransaction:
    """The ids one `MemoryInbox` transaction recorded (committed together when it ends)."""

    def __init__(self) -> None:
        self.recorded: list[Key] = []


class MemoryInbox:
    """Message ids handled, per consumer, in this process's memory.

    A record is held by its transaction until the transaction ends: another
    transaction recording the same id waits, then finds it (committed) or
    takes it (rolled back), as on a database with a unique key.
    """

    def __init__(self, clock: typing.Callable[[], datetime.datetime] = _utc_now) -> None:
        self._clock = clock
        self._done: dict[Key, datetime.datetime] = {}
        self._held: dict[Key, asyncio.Event] = {}

    @contextlib.asynccontextmanager
    async def transaction(self) -> typing.AsyncIterator[MemoryInboxTransaction]:
        """A transaction: its records are committed when the block ends, released when it raises."""
        tx = MemoryInboxTransaction()
        try:
            yield tx
        except BaseException:
            self._release(tx, commit=False)
            raise
        self._release(tx, commit=True)

    def _release(self, tx: MemoryInboxTransaction, *, commit: bool) -> None:
        now = self._clock()
        for key in tx.recorded:
            if commit:
                self._done[key] = now
            self._held.pop(key).set()
        tx.recorded.clear()

    async def record(self, tx: MemoryInboxTransaction, consumer: str, message_id: str) -> bool:
        """Record ``message_id`` for ``consumer`` in ``tx``; False if handled already (see `cqrs.inbox.Inbox`).
        ``consumer`` and ``message_id`` must not be empty (`ValueError`; the SQL inbox also limits the
        consumer name to 200 characters)."""
        if not consumer:
            raise ValueError(f"An inbox consumer must not be empty, got {consumer!r}")
        if not message_id:
            raise ValueError("An inbox message id must not be empty")
        key = (consumer, message_id)
        while True:
            if key in self._done or key in tx.recorded:
                return False
            held = self._held.get(key)
            if held is None:
                break
            await held.wait()
        self._held[key] = asyncio.Event()
        tx.recorded.append(key)
        return True

    async def handled(self, consumer: str, message_id: str) -> bool:
        """Whether a committed record says ``consumer`` handled ``message_id``."""
        return (consumer, message_id) in self._done

    async def purge(self, *, older_than: datetime.timedelta, limit: int = 1000) -> int:
        """Forget up to ``limit`` records older than ``older_than``; returns how many."""
        if older_than < datetime.timedelta(0):
            raise ValueError(f"purge(older_than=...) must not be negative, got {older_than}")
        cutoff = self._clock() - older_than
        doomed = sorted((at, key) for key, at in self._done.items() if at <= cutoff)[: max(limit, 0)]
        for _, key in doomed:
            del self._done[key]
        return len(doomed)
