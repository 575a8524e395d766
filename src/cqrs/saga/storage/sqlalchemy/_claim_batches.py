"""One-saga claims made at the same time, sent together: many `claim_saga` calls, one statement.

When many runs take up stored sagas at once (``recover_saga`` from many
tasks, resumes), each claim would be a round trip and a commit of its own.
Here a claim is queued; while no batch is in flight the queue is sent at once
(a lone claim goes alone, with no wait), and the claims queued while a batch
is in flight go together as the next one when it returns: what is queued is
drained, nothing waits for a timer. Each batch is one statement per (owner,
lease length) among its claims (PostgreSQL's `ClaimStatements.claim_ids`): one
round trip and one commit for all of them.

A saga is never twice in one batch (a second claim of it waits for the next
batch, so it is granted after the first, with the next epoch), and a claim
whose caller was cancelled before its batch was sent is left out.
"""

from __future__ import annotations

import asyncio
import typing
import uuid

__all__ = ["ClaimBatches"]

Row = typing.Sequence[typing.Any]
#: Who claims and for how long: claims with the same key share a statement.
Key = tuple[str, float]
#: Sends one batch: the key and the saga ids; returns each id's row (an id without a row is not stored).
Send = typing.Callable[[Key, list[uuid.UUID]], typing.Awaitable[dict[uuid.UUID, Row]]]
_Pending = tuple[Key, uuid.UUID, "asyncio.Future[Row | None]"]

#: Claims per statement at most (the rest go in the next batch).
MOST_PER_BATCH = 256


class ClaimBatches:
    """The queue of one storage's one-saga claims, on one event loop at a time."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._queue: list[_Pending] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None

    async def claim(self, key: Key, saga_id: uuid.UUID) -> Row | None:
        """The claim's row from its batch's statement; None if no such saga is stored."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a storage used from another loop (tests, sync wrappers) starts afresh
            self._loop, self._queue, self._draining = loop, [], None
        future: asyncio.Future[Row | None] = loop.create_future()
        self._queue.append((key, saga_id, future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Send batches until the queue is empty (each batch holds what was queued while the last was in flight)."""
        try:
            while self._queue:
                batch, self._queue = self._take(self._queue)
                groups: dict[Key, list[_Pending]] = {}
                for pending in batch:
                    groups.setdefault(pending[0], []).append(pending)
                await asyncio.gather(*(self._run(key, group) for key, group in groups.items()))
        finally:
            self._draining = None

    @staticmethod
    def _take(queue: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
        """The next batch, and what stays queued: claims whose caller is gone are dropped; a saga already in
        the batch, and anything past `MOST_PER_BATCH`, waits."""
        batch: list[_Pending] = []
        later: list[_Pending] = []
        seen: set[uuid.UUID] = set()
        for pending in queue:
            if pending[2].done():
                continue
            if pending[1] in seen or len(batch) >= MOST_PER_BATCH:
                later.append(pending)
            else:
                seen.add(pending[1])
                batch.append(pending)
        return batch, later

    async def _run(self, key: Key, group: list[_Pending]) -> None:
        try:
            rows = await self._send(key, [saga_id for _, saga_id, _ in group])
        except BaseException as error:
            for _, _, future in group:
                if not future.done():
                    # A cancellation of the drain (the loop closing) is the callers' cancellation too.
                    if isinstance(error, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for _, saga_id, future in group:
            if not future.done():
                future.set_result(rows.get(saga_id))
