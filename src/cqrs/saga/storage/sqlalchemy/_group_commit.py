"""Group commit on PostgreSQL: one writer sends the writes queued meanwhile as one statement, one commit.

`GroupCommit.checkpoint` (and `GroupCommit.start`, for a start without
outbox messages) queues the write and waits. One writer task per event loop
takes everything queued (at most one write per saga, so a saga's writes keep
their order and each batch writes a saga's row once)
and sends it as `_batch.batch_statement`: one round trip, one commit. While
that batch is in flight the next one queues up; there is no timer window, the
writer sends whatever is queued as soon as the previous batch is back. So a
batch is as large as the number of checkpoints that arrived during one round
trip: a lone saga gets a batch of one (the same commit as without group
commit), many concurrent sagas share each commit.

Every waiter learns its own checkpoint's outcome, only after the batch's
commit returned:

- written (its fenced update matched): True; fenced (its lease was lost, or
  its epoch is stale): False, exactly as a checkpoint on its own;
- the batch statement failed (nothing of it was written: it is one
  autocommitted statement): each checkpoint of the batch is written again on
  its own, so only the ones whose own write fails raise;
- the connection was lost or the writer was interrupted with the batch in
  flight (whether it committed is unknown): every waiter of the batch raises
  (``OperationalError`` with ``connection_invalidated``, or ``RuntimeError``),
  as a checkpoint on its own would; none is retried, so none is written twice.

On asyncpg with the fast path the writer holds one connection of the engine's
pool while it has work (back to the pool once no checkpoint has arrived for
`_LINGER_SECONDS`, and exchanged for a fresh checkout every `_HOLD_SECONDS`),
and runs the batch on the asyncpg connection itself; otherwise the batch runs
through SQLAlchemy (`Executor.write_returning`). `close` lets the writer send
everything queued, then gives its connection back.
"""

from __future__ import annotations

import asyncio
import collections
import typing
import uuid
import weakref

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from cqrs.outbox.models import OutboxMessage
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.models import Lease, NewSaga, StepEntry
from cqrs.saga.storage.sqlalchemy._batch import (
    BATCH_PARAM,
    STARTS_PARAM,
    batch_statement,
    encode_checkpoint,
    encode_start,
    join_batch,
)

if typing.TYPE_CHECKING:
    from cqrs.saga.storage.sqlalchemy._executors import Executor

__all__ = ["GroupCommit"]

#: How long the writer keeps its connection with nothing to send (not a batching window: a
#: checkpoint that arrives is sent at once).
_LINGER_SECONDS = 0.05
#: How long the writer uses a connection before giving it back for a fresh checkout (pre-ping,
#: recycling and invalidation of the pool then apply), however busy it is.
_HOLD_SECONDS = 1.0
#: The most checkpoints in one statement (the rest wait for the next one).
_MAX_BATCH = 512

Retry = typing.Callable[[], typing.Awaitable[bool]]
#: `SqlAlchemySagaStorage`'s checkpoint without group commit (same arguments as `GroupCommit.checkpoint`).
Alone = typing.Callable[..., typing.Awaitable[bool]]


def _future() -> asyncio.Future[bool]:
    return asyncio.get_running_loop().create_future()


class _Pending:
    """A queued checkpoint: its saga, its JSON, its waiter, and how to write it on its own."""

    __slots__ = ("encoded", "future", "key", "retry", "start")

    def __init__(self, key: str, encoded: str, future: asyncio.Future[bool], retry: Retry, start: bool) -> None:
        self.key = key
        self.start = start
        self.encoded = encoded
        self.future = future
        self.retry = retry


class _Writer:
    """One event loop's queue, writer task and connection."""

    __slots__ = ("closing", "connection", "loop", "queue", "task", "until", "wakeup")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: collections.deque[_Pending] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        #: Set while the writer waits for work: resolved (True) by the next write queued, or (False) by `wake`.
        self.wakeup: asyncio.Future[bool] | None = None
        self.closing = False
        self.connection: PoolProxiedConnection | None = None
        self.until = 0.0

    def wake(self, work: bool) -> None:
        wakeup, self.wakeup = self.wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(work)

    def take(self) -> list[_Pending]:
        """The next batch: queued checkpoints in order, one per saga (a saga's later ones stay queued)."""
        batch: list[_Pending] = []
        seen: set[str] = set()
        rest: collections.deque[_Pending] = collections.deque()
        queue = self.queue
        while queue:
            pending = queue.popleft()
            if pending.future.done():  # its caller was cancelled before it was sent: it is not written
                continue
            if pending.key in seen or len(batch) >= _MAX_BATCH:
                rest.append(pending)
            else:
                seen.add(pending.key)
                batch.append(pending)
        self.queue = rest
        return batch


class GroupCommit:
    """Checkpoints of many sagas in one commit (see the module doc)."""

    def __init__(self, engine: AsyncEngine, executor: Executor) -> None:
        self._engine = engine
        self._executor = executor
        self._statement = batch_statement()
        self._direct = executor.fast_path
        compiled = self._statement.compile(dialect=engine.sync_engine.dialect)
        self._sql = compiled.string
        self._order = tuple(compiled.positiontup or ())
        self._writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writer] = weakref.WeakKeyDictionary()

    async def checkpoint(
        self, alone: Alone, saga_id: uuid.UUID, lease: Lease, entry: StepEntry | None,
        context: dict[str, typing.Any] | None, status: SagaStatus | None, error: str | None,
        lease_seconds: float, release: bool, outbox: typing.Sequence[OutboxMessage],
    ) -> bool:
        """Queue the checkpoint and wait until its batch committed (`SqlAlchemySagaStorage.checkpoint`);
        ``alone`` writes a checkpoint on its own (after a failed batch)."""
        args = (saga_id, lease, entry, context, status, error, lease_seconds, release, outbox)
        try:
            encoded = encode_checkpoint(*args)
        except (TypeError, ValueError) as failure:  # a value JSON cannot hold: what SQLAlchemy raises for it
            raise sa.exc.StatementError(str(failure), "checkpoint", None, failure) from failure
        return await self._queue(_Pending(str(saga_id), encoded, _future(), lambda: alone(*args), False))

    async def start(
        self, alone: typing.Callable[[NewSaga, str, float], typing.Awaitable[Lease | None]],
        saga: NewSaga, owner: str, lease_seconds: float,
    ) -> Lease | None:
        """Queue the start of ``saga`` (without outbox messages) and wait until its batch committed
        (`SqlAlchemySagaStorage.start_saga`); ``alone`` starts a saga on its own (after a failed batch)."""
        try:
            encoded = encode_start(saga, owner, lease_seconds)
        except (TypeError, ValueError) as failure:
            raise sa.exc.StatementError(str(failure), "start_saga", None, failure) from failure

        async def retry() -> bool:
            return await alone(saga, owner, lease_seconds) is not None

        inserted = await self._queue(_Pending(str(saga.saga_id), encoded, _future(), retry, True))
        return Lease(owner=owner, epoch=1) if inserted else None

    async def _queue(self, pending: _Pending) -> bool:
        loop = asyncio.get_running_loop()
        writer = self._writers.get(loop)
        if writer is None:
            writer = self._writers[loop] = _Writer(loop)
        writer.queue.append(pending)
        if writer.task is None:
            writer.task = loop.create_task(self._run(writer))
        else:
            writer.wake(True)
        return await pending.future

    async def close(self) -> None:
        """Send everything queued on this loop's writer and wait for it; give its connection back."""
        writer = self._writers.get(asyncio.get_running_loop())
        if writer is None or writer.task is None:
            return
        writer.closing = True
        writer.wake(True)
        try:
            await writer.task
        finally:
            writer.closing = False

    # -- the writer -----------------------------------------------------------------------------------

    async def _run(self, writer: _Writer) -> None:
        batch: list[_Pending] = []
        try:
            while True:
                if not writer.queue:
                    if writer.closing or not await self._more(writer):
                        break
                    continue
                batch = writer.take()
                if batch:
                    await self._send(writer, batch)
                batch = []
        except BaseException as error:
            failure = RuntimeError(
                "The group-commit writer was interrupted; whether this checkpoint was written is unknown"
            )
            for pending in [*batch, *writer.queue]:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            writer.queue.clear()
            if isinstance(error, Exception):
                raise failure from error
            raise
        finally:
            # Before any await: a checkpoint queued from now on starts a new writer.
            writer.task = None
            connection, writer.connection = writer.connection, None
            if connection is not None:
                await greenlet_spawn(connection.close)

    async def _more(self, writer: _Writer) -> bool:
        """Wait (holding the connection) for the next checkpoint; False after `_LINGER_SECONDS` without one."""
        wakeup = writer.wakeup = writer.loop.create_future()
        timer = writer.loop.call_later(_LINGER_SECONDS, writer.wake, False)
        try:
            await wakeup
        finally:
            timer.cancel()
            writer.wakeup = None
        return bool(writer.queue)

    async def _send(self, writer: _Writer, batch: list[_Pending]) -> None:
        """Write ``batch`` in one statement and tell each waiter its outcome."""
        try:
            params = {
                BATCH_PARAM: join_batch(pending.encoded for pending in batch if not pending.start),
                STARTS_PARAM: join_batch(pending.encoded for pending in batch if pending.start),
            }
            rows = await self._execute(writer, params)
        except Exception as error:
            unknown = not isinstance(error, sa.exc.DBAPIError) or error.connection_invalidated
            if unknown or len(batch) == 1:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                return
            # Nothing of the batch was written: each checkpoint on its own, so only the failing ones fail.
            for pending in batch:
                if pending.future.done():
                    continue
                try:
                    written = await pending.retry()
                except Exception as own_error:
                    pending.future.set_exception(own_error)
                else:
                    pending.future.set_result(written)
            return
        matched = {str(row[0]) for row in rows}
        for pending in batch:
            if not pending.future.done():
                pending.future.set_result(pending.key in matched)

    async def _execute(self, writer: _Writer, params: dict[str, str]) -> typing.Sequence[typing.Sequence[typing.Any]]:
        if not self._direct:
            return await self._executor.write_returning(self._statement, params)
        from cqrs.saga.storage.sqlalchemy._executors._asyncpg import _lost, _translate

        now = writer.loop.time()
        connection = writer.connection
        if connection is not None and now > writer.until:
            writer.connection = None
            await greenlet_spawn(connection.close)
            connection = None
        if connection is None:
            connection = await self._engine.raw_connection()
            writer.connection, writer.until = connection, now + _HOLD_SECONDS
        driver = connection.driver_connection
        args = [params[name] for name in self._order]
        try:
            rows: typing.Sequence[typing.Sequence[typing.Any]] = await driver.fetch(self._sql, *args)  # type: ignore[union-attr]
        except BaseException as error:
            writer.connection = None
            if not isinstance(error, Exception):  # cancelled with the batch perhaps in flight
                connection.invalidate()
                raise
            lost = _lost(error, driver)
            if lost:
                connection.invalidate(error)
            else:
                await greenlet_spawn(connection.close)
            raise _translate(error, self._sql, args, lost, self._engine.sync_engine.hide_parameters) from error
        return rows
