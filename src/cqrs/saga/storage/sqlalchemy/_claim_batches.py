"""One-saga claims made at the same time, sent together: many `claim_saga` calls, one statement.

When many runs take up stored sagas at once (``recover_saga`` from many
tasks, resumes), each claim would be a round trip and a commit of its own.
Here a claim is queued, and the queue is sent on the event loop's next
iteration, with every claim made until then, as long as fewer than
`MOST_IN_FLIGHT` batches are in flight; the claims queued meanwhile go
together as the next batch when one returns. What is queued is drained,
nothing waits for a timer, and a lone claim goes at once, alone. Each batch is
one statement per (owner, lease length) among its claims (PostgreSQL's
`ClaimStatements.claim_ids`): one round trip and one commit for all of them.

A saga is never in two claims at once (a second claim of it waits until the
batch of the first has returned, so it is granted after it, with the next
epoch), and a claim
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
#: Batches in flight at once at most: with one, a claim made just after a batch left waits for that batch's
#: round trip, then its own; with two it rarely waits, and the batches are about as large.
MOST_IN_FLIGHT = 2


class ClaimBatches:
    """The queue of one storage's one-saga claims, on one event loop at a time."""

    def __init__(self, send: Send, most_in_flight: int = MOST_IN_FLIGHT) -> None:
        self._send = send
        self._most_in_flight = most_in_flight
        self._queue: list[_Pending] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._sagas_in_flight: set[uuid.UUID] = set()
        self._scheduled = False

    async def claim(self, key: Key, saga_id: uuid.UUID) -> Row | None:
        """The claim's row from its batch's statement; None if no such saga is stored."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a storage used from another loop (tests, sync wrappers) starts afresh
            self._loop, self._queue, self._in_flight, self._scheduled = loop, [], set(), False
            self._sagas_in_flight = set()
        future: asyncio.Future[Row | None] = loop.create_future()
        self._queue.append((key, saga_id, future))
        if not self._scheduled and len(self._in_flight) < self._most_in_flight:
            # Sent on the loop's next iteration, with the claims made meanwhile.
            self._scheduled = True
            loop.call_soon(self._send_queued)
        return await future

    def _send_queued(self) -> None:
        """Send what is queued as batches, while fewer than ``most_in_flight`` are in flight."""
        self._scheduled = False
        loop = self._loop
        assert loop is not None
        while self._queue and len(self._in_flight) < self._most_in_flight:
            batch, self._queue = self._take(self._queue, self._sagas_in_flight)
            if not batch:
                break
            self._sagas_in_flight.update(saga_id for _, saga_id, _ in batch)
            task = loop.create_task(self._send_batch(batch))
            self._in_flight.add(task)

    async def _send_batch(self, batch: list[_Pending]) -> None:
        try:
            groups: dict[Key, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending[0], []).append(pending)
            await asyncio.gather(*(self._run(key, group) for key, group in groups.items()))
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.discard(task)
            self._sagas_in_flight.difference_update(saga_id for _, saga_id, _ in batch)
            if self._queue and asyncio.get_running_loop() is self._loop:
                self._send_queued()

    @staticmethod
    def _take(queue: list[_Pending], in_flight: set[uuid.UUID]) -> tuple[list[_Pending], list[_Pending]]:
        """The next batch, and what stays queued: claims whose caller is gone are dropped; a saga already in
        the batch or in one in flight, and anything past `MOST_PER_BATCH`, waits."""
        batch: list[_Pending] = []
        later: list[_Pending] = []
        seen = set(in_flight)
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
