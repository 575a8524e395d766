"""Group commit on PostgreSQL: the writes queued meanwhile go out as one statement, one commit.

`GroupCommit.checkpoint` (and `GroupCommit.start`, for a start without
outbox messages) queues the write and waits. One writer task per event loop
takes everything queued (at most one write per saga, and none of a saga whose
previous write is still in flight, so a saga's writes keep their order and a
batch writes a saga's row once) and sends it as `_batch.batch_statement`: one
round trip, one commit. There is no timer window: the writer sends what is
queued as soon as it may. It keeps at most `_IN_FLIGHT` batches in flight
(four), each on its own connection, so the sagas released by one batch run
their next steps while others are on the server; a write queued while all
are in flight goes out with the next batch. So a batch is as large as the
number of writes that arrived meanwhile: a lone saga gets batches of one (the
same commits as without group commit), many concurrent sagas share each commit.
A batch of `_SPLIT_FROM` writes or more is released in two halves with a turn
of the event loop between them: the first half's sagas queue their next writes
and the writer sends them while the second half's sagas run. Released at once,
many sagas would take turns with the server in one lockstep batch (the client
idle while the batch is on the server, the server idle while the client runs
the sagas); in halves, the two overlap.

Every waiter learns its own write's outcome, only after the batch's commit
returned:

- written (its fenced update matched, or its start's id was free): True; a
  checkpoint fenced (its lease was lost, or its epoch is stale) gets False,
  exactly as on its own;
- the batch statement failed (nothing of it was written: it is one
  autocommitted statement): each write of the batch is made again on its own,
  so only the ones whose own write fails raise;
- the connection was lost or the writer was interrupted with the batch in
  flight (whether it committed is unknown): every waiter of the batch raises
  (``OperationalError`` with ``connection_invalidated``, or ``RuntimeError``),
  as a write on its own would; none is made again, so none is made twice.

On asyncpg with the fast path the writer holds its connections (from the
engine's pool) while it has work: back to the pool once nothing was queued for
`_LINGER_SECONDS`, and each exchanged for a fresh checkout after
`_HOLD_SECONDS`; the batch runs on the asyncpg connection itself. A lost
connection disposes the engine's pool, as the executor's own writes do, and
no connection of the disposed pool is used again. Otherwise
it runs through SQLAlchemy (`Executor.write_returning`). `close` lets the
writer send everything queued, then gives its connections back.
"""

from __future__ import annotations

import asyncio
import collections
import typing
import uuid
import weakref

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool, PoolProxiedConnection
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
    from cqrs.saga.storage.sqlalchemy._executors._asyncpg import AsyncpgExecutor

__all__ = ["GroupCommit"]

#: How long the writer keeps its connection with nothing to send (not a batching window: a
#: checkpoint that arrives is sent at once).
_LINGER_SECONDS = 0.05
#: How long the writer uses a connection before giving it back for a fresh checkout (pre-ping,
#: recycling and invalidation of the pool then apply), however busy it is.
_HOLD_SECONDS = 1.0
#: The most writes in one statement (the rest wait for the next one).
_MAX_BATCH = 512
#: Batches in flight at once, each on its own connection: while one is on the server, the sagas released
#: by the other run their next steps and queue their next writes (one alone would leave client and
#: server taking turns).
_IN_FLIGHT = 4
#: The smallest batch released in two halves (below it, the second statement costs the server more than
#: the overlap gains: bench_group_commit.py at 16 concurrent sagas, with a split from 4, ran at 1.12x the
#: floor against 1.37x without; see docs/performance.md).
_SPLIT_FROM = 32

Retry = typing.Callable[[], typing.Awaitable[bool]]
#: `SqlAlchemySagaStorage`'s checkpoint without group commit (same arguments as `GroupCommit.checkpoint`).
Alone = typing.Callable[..., typing.Awaitable[bool]]


def _future() -> asyncio.Future[bool]:
    return asyncio.get_running_loop().create_future()


class _Pending:
    """A queued write (a start or a checkpoint): its saga, its JSON, its waiter, and how to make it on its own."""

    __slots__ = ("encoded", "future", "key", "retry", "start")

    def __init__(self, key: str, encoded: str, future: asyncio.Future[bool], retry: Retry, start: bool) -> None:
        self.key = key
        self.start = start
        self.encoded = encoded
        self.future = future
        self.retry = retry


def _tell(batch: list[_Pending], matched: set[str]) -> None:
    """Tell each waiter of a committed batch whether its write was made (False: fenced, or its start's id taken)."""
    for pending in batch:
        if not pending.future.done():
            pending.future.set_result(pending.key in matched)


class _Writer:
    """One event loop's queue, writer task, batches in flight and connections."""

    __slots__ = ("busy", "closing", "idle", "in_flight", "loop", "queue", "sends", "task", "wakeup")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: collections.deque[_Pending] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        #: Set while the writer waits: resolved by the next write queued, a batch back, or (False) the linger timer.
        self.wakeup: asyncio.Future[bool] | None = None
        self.closing = False
        self.in_flight = 0
        self.sends: set[asyncio.Task[None]] = set()  # the batches in flight (the loop keeps tasks weakly)
        #: The sagas with a write in a batch in flight (each with its batch): their next writes wait for it.
        self.busy: dict[str, list[_Pending]] = {}
        #: Connections the writer holds between batches, each with its pool and the time it is due back.
        self.idle: list[tuple[PoolProxiedConnection, Pool, float]] = []

    def wake(self, work: bool) -> None:
        wakeup, self.wakeup = self.wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(work)

    def free(self, batch: list[_Pending], released: typing.Iterable[_Pending] | None = None) -> None:
        """Let the next writes of the sagas of ``batch`` (or of its ``released`` part) go out; a saga whose
        next write is already in a later batch stays busy with that batch."""
        busy = self.busy
        for pending in batch if released is None else released:
            if busy.get(pending.key) is batch:
                del busy[pending.key]

    def take(self) -> list[_Pending]:
        """The next batch: queued writes in order, one per saga and none of a saga with a batch in flight (a
        saga's later writes stay queued)."""
        batch: list[_Pending] = []
        seen = set(self.busy)
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
    """Starts and checkpoints of many sagas in one commit (see the module doc)."""

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
        entries: typing.Sequence[StepEntry],
    ) -> bool:
        """Queue the checkpoint and wait until its batch committed (`SqlAlchemySagaStorage.checkpoint`);
        ``alone`` writes a checkpoint on its own (after a failed batch)."""
        args = (saga_id, lease, entry, context, status, error, lease_seconds, release, outbox, entries)
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
        try:
            while True:
                batch = writer.take() if writer.in_flight < _IN_FLIGHT else []
                if batch:
                    writer.in_flight += 1
                    writer.busy.update((pending.key, batch) for pending in batch)
                    send = writer.loop.create_task(self._send(writer, batch))
                    writer.sends.add(send)
                    send.add_done_callback(writer.sends.discard)
                elif writer.in_flight:
                    await self._wait(writer, linger=False)  # until a batch is back (or a write queued)
                elif not writer.queue and (writer.closing or not await self._wait(writer, linger=True)):
                    break
        except BaseException as error:
            failure = RuntimeError("The group-commit writer was interrupted; this write was not sent")
            for pending in writer.queue:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            writer.queue.clear()
            if isinstance(error, Exception):
                raise failure from error
            raise
        finally:
            # Before any await: a write queued from now on starts a new writer.
            writer.task = None
            idle, writer.idle = writer.idle, []
            for connection, pool, _ in idle:
                await self._give_back(connection, pool)

    async def _wait(self, writer: _Writer, *, linger: bool) -> bool:
        """Wait for the next write queued or batch back; with ``linger``, False after `_LINGER_SECONDS`
        without either (the writer then gives its connections back and ends)."""
        wakeup = writer.wakeup = writer.loop.create_future()
        timer = writer.loop.call_later(_LINGER_SECONDS, writer.wake, False) if linger else None
        try:
            await wakeup
        finally:
            if timer is not None:
                timer.cancel()
            writer.wakeup = None
        return bool(writer.queue)

    async def _send(self, writer: _Writer, batch: list[_Pending]) -> None:
        """Write ``batch`` in one statement and tell each waiter its outcome."""
        try:
            await self._write(writer, batch)
        except BaseException:
            # Interrupted (the loop is closing) with the batch perhaps in flight: its outcome is unknown.
            failure = RuntimeError("The group-commit writer was interrupted; whether this write was made is unknown")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            raise
        finally:
            writer.in_flight -= 1
            writer.free(batch)
            writer.wake(True)

    async def _write(self, writer: _Writer, batch: list[_Pending]) -> None:
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
            # Nothing of the batch was written: each write on its own, so only the failing ones fail.
            for pending in batch:
                if pending.future.done():
                    continue
                try:
                    written = await pending.retry()
                except Exception as own_error:
                    if not pending.future.done():  # its caller may have been cancelled meanwhile
                        pending.future.set_exception(own_error)
                else:
                    if not pending.future.done():
                        pending.future.set_result(written)
            return
        matched = {str(row[0]) for row in rows}
        if len(batch) < _SPLIT_FROM:
            _tell(batch, matched)
            return
        half = len(batch) // 2  # released a turn of the loop before the rest (see the module doc)
        _tell(batch[:half], matched)
        writer.free(batch, batch[:half])
        writer.wake(True)
        try:
            await asyncio.sleep(0)
        finally:  # even if interrupted here: the batch committed, so the rest are told so
            _tell(batch[half:], matched)

    async def _execute(self, writer: _Writer, params: dict[str, str]) -> typing.Sequence[typing.Sequence[typing.Any]]:
        if not self._direct:
            return await self._executor.write_returning(self._statement, params)
        direct = typing.cast("AsyncpgExecutor", self._executor)  # the fast path on PostgreSQL is asyncpg's
        now = writer.loop.time()
        connection: PoolProxiedConnection | None = None
        while writer.idle and connection is None:
            held, pool, until = writer.idle.pop()
            if until > now and pool is self._engine.sync_engine.pool:
                connection = held
            else:  # held for long enough, or its pool was disposed (after a lost connection: it may be dead too)
                await self._give_back(held, pool)
        if connection is None:
            pool = self._engine.sync_engine.pool  # the checkout's (read before it, which may await)
            connection, until = await self._engine.raw_connection(), now + _HOLD_SECONDS
        driver = connection.driver_connection
        args = [params[name] for name in self._order]
        try:
            rows: typing.Sequence[typing.Sequence[typing.Any]] = await driver.fetch(self._sql, *args)  # type: ignore[union-attr]
        except BaseException as error:
            # As for the executor's own writes: a lost connection disposes the pool (a restart or failover took
            # the connections held here too), a cancelled batch's connection is invalidated.
            await direct.failed(connection, pool, error, self._sql, args, None)
        if writer.task is not None:
            writer.idle.append((connection, pool, until))
        else:  # the writer has ended (interrupted): nobody would give it back
            await self._give_back(connection, pool)
        return rows

    async def _give_back(self, connection: PoolProxiedConnection, pool: Pool) -> None:
        """Check ``connection`` in to its pool, or close it if that pool was disposed since."""
        if pool is self._engine.sync_engine.pool:
            await greenlet_spawn(connection.close)
        else:
            connection.invalidate()
