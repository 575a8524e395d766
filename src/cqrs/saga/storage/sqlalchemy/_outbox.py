"""The outbox half of `SqlAlchemySagaStorage`: rows written with starts and checkpoints, and `OutboxStorage`.

Round trips: on PostgreSQL a start or a checkpoint with outbox messages is
still one statement (the messages one JSON array parameter), also on the
asyncpg fast path; a claim is one statement (``FOR UPDATE SKIP LOCKED``), and
so is each mark. On SQLite the rows join the start's or checkpoint's
transaction (one executemany) and a claim is one ``UPDATE ... RETURNING``
under the write lock; on MySQL/MariaDB the rows join the transaction too and
a claim is a short transaction (read, lock with ``SKIP LOCKED``, lease, read
back).
"""

from __future__ import annotations

import datetime
import typing
import uuid

from cqrs.outbox.models import OutboxMessage, OutboxRecord, OutboxStatus
from cqrs.saga.storage.models import NewSaga, StepEntry
from cqrs.saga.storage.sqlalchemy import _outbox_transactions
from cqrs.saga.storage.sqlalchemy._executors import Executor
from cqrs.saga.storage.sqlalchemy._outbox_schema import outbox_record
from cqrs.saga.storage.sqlalchemy._statements import Statements

__all__ = ["SqlOutboxMethods", "outbox_json_rows", "outbox_rows"]

Params = dict[str, typing.Any]


def outbox_json_rows(messages: typing.Sequence[OutboxMessage]) -> list[dict[str, typing.Any]]:
    """PostgreSQL: the messages as the JSON array `OutboxStatements.inserted_from` expands."""
    return [
        {
            "message_id": str(m.message_id),
            "topic": m.topic,
            "name": m.name,
            "payload": m.payload,
            "headers": m.headers,
            "position": position,
        }
        for position, m in enumerate(messages)
    ]


def outbox_rows(saga_id: uuid.UUID, messages: typing.Sequence[OutboxMessage]) -> list[Params]:
    """SQLite and MySQL: one parameter set of `OutboxStatements.insert` per message."""
    return [
        {
            "b_id": saga_id,
            "b_message_id": m.message_id,
            "b_topic": m.topic,
            "b_message_name": m.name,
            "b_payload": m.payload,
            "b_headers": m.headers,
        }
        for m in messages
    ]


class SqlOutboxMethods:
    """`cqrs.outbox.OutboxStorage` on the SQL storage, and the outbox rows of its starts and checkpoints."""

    _sql: Statements
    _executor: Executor

    # -- rows written with the engine's commits ------------------------------------------------------

    async def _start_with_outbox(self, saga: NewSaga, params: Params) -> bool:
        """Insert the saga and its outbox rows in one commit; False (nothing written) if its id is taken."""
        sql = self._sql
        if sql.postgres:
            params["b_outbox"] = outbox_json_rows(saga.outbox)
            return await self._executor.write(sql.start_with_outbox, params) > 0
        rows = outbox_rows(saga.saga_id, saga.outbox)
        if not sql.mysql:  # SQLite: the INSERT ... ON CONFLICT DO NOTHING, then the rows if it inserted
            return await self._executor.write_then(sql.start, params, [(sql.outbox.insert, rows)])
        return await self._executor.transaction(
            lambda conn: _outbox_transactions.start_with_outbox(conn, sql, params, rows)
        )

    async def _checkpoint_with_outbox(
        self, statement: typing.Any, params: Params, saga_id: uuid.UUID, entry: StepEntry | None,
        messages: typing.Sequence[OutboxMessage],
    ) -> bool:
        """A checkpoint with outbox rows: one statement on PostgreSQL (its row count is the rows inserted,
        0 if the fenced update did not match), else the update, the log row and the rows in one transaction."""
        sql = self._sql
        if sql.postgres:
            if entry is not None:
                params.update(sql.entry_params(entry))
            params["b_outbox"] = outbox_json_rows(messages)
            return await self._executor.write(statement, params) > 0
        then: list[tuple[typing.Any, typing.Any]] = []
        if entry is not None:
            then.append((sql.append, {"b_id": saga_id, **sql.entry_params(entry)}))
        then.append((sql.outbox.insert, outbox_rows(saga_id, messages)))
        return await self._executor.write_then(statement, params, then)

    # -- cqrs.outbox.OutboxStorage ------------------------------------------------------------------------

    async def claim_outbox(self, owner: str, lease_seconds: float, *, limit: int) -> list[OutboxRecord]:
        """Claim up to ``limit`` pending rows that are due and not leased, each the earliest unpublished row of
        its saga, in ``seq`` order; each is leased to ``owner`` for ``lease_seconds``."""
        if limit <= 0:
            return []
        sql = self._sql
        params = {"b_owner": owner, "b_lease_seconds": lease_seconds, "b_limit": limit}
        rows: typing.Sequence[typing.Sequence[typing.Any]]
        if sql.mysql:
            rows = await self._executor.transaction(
                lambda conn: _outbox_transactions.claim_mysql(conn, sql, params, limit)
            )
        else:
            rows = await self._executor.write_returning(sql.outbox.claim(), params)
        return sorted((outbox_record(row) for row in rows), key=lambda r: r.seq)

    async def mark_published(self, owner: str, seqs: typing.Collection[int]) -> int:
        """Mark the rows ``seqs`` that ``owner`` holds as published; returns how many were."""
        if not seqs:
            return 0
        return await self._executor.write(self._sql.outbox.mark_published, {"b_owner": owner, "b_seqs": list(seqs)})

    async def mark_failed(self, owner: str, seq: int, error: str, *, retry_in: float | None) -> bool:
        """Count a failed publication of a row ``owner`` holds: due again in ``retry_in`` seconds, or parked
        (None); the lease is given up. False if ``owner`` does not hold the row (any more)."""
        osql = self._sql.outbox
        params: Params = {"b_owner": owner, "b_seq": seq, "b_error": error}
        if retry_in is None:
            return await self._executor.write(osql.park, params) == 1
        params["b_retry_in"] = max(retry_in, 0.0)
        return await self._executor.write(osql.retry_later, params) == 1

    async def outbox_backlog(self) -> int:
        """How many rows wait to be published (pending; parked rows not counted)."""
        rows = await self._executor.read(self._sql.outbox.backlog, {})
        return int(rows[0][0])

    async def list_outbox(
        self,
        *,
        status: OutboxStatus | None = None,
        saga_id: uuid.UUID | None = None,
        limit: int = 100,
    ) -> list[OutboxRecord]:
        """Rows in ``seq`` order, of one status and one saga if given."""
        params: Params = {"b_limit": max(limit, 0)}
        if status is not None:
            params["b_outbox_status"] = OutboxStatus(status).value
        if saga_id is not None:
            params["b_saga_id"] = saga_id
        statement = self._sql.outbox.list(status is not None, saga_id is not None)
        return [outbox_record(row) for row in await self._executor.read(statement, params)]

    async def requeue_outbox(self, message_id: uuid.UUID) -> bool:
        """Make an unpublished (parked, or failed and waiting) row due now with its attempts at zero; a
        relay holding it keeps its claim. False if no unpublished row has this message id."""
        return await self._executor.write(self._sql.outbox.requeue, {"b_message_id": message_id}) == 1

    async def purge_outbox(self, *, older_than: datetime.timedelta, limit: int = 1000) -> int:
        """Delete up to ``limit`` rows published more than ``older_than`` ago, oldest first; how many went."""
        if older_than < datetime.timedelta(0):
            raise ValueError(f"purge_outbox(older_than=...) must not be negative, got {older_than}")
        sql = self._sql
        params = {"b_older": older_than.total_seconds(), "b_limit": max(limit, 0)}
        if sql.mysql:
            return await self._executor.transaction(lambda conn: _outbox_transactions.purge_mysql(conn, sql, params))
        return await self._executor.write(sql.outbox.purge, params)
