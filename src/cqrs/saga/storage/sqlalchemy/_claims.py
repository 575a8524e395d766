"""Claims with their histories: `claim_saga` and `claim_recoverable` of the SQL storage.

Round trips and commits per claim (a one-saga claim or a whole batch alike):

- PostgreSQL: one statement (`ClaimStatements`), autocommitted, on the asyncpg
  fast path where the storage has it: one round trip and one commit. One-saga
  claims made at the same time share one statement (`_claim_batches`). Only a
  claimed saga whose row changed while the claim waited for its lock (``fresh``
  false, see `_claim_statements`) has its history read again, by a second read,
  and only a one-saga claim whose row another transaction held when its batch
  came is sent again, alone (waiting for that lock, as a lone claim does).
- SQLite: one transaction; the claim and the histories are one ``UPDATE ...
  RETURNING`` (a one-saga claim that is not granted reads the row again).
- MySQL and MariaDB: one transaction; after the claim's writes, one read of
  the claimed rows joined with their log rows.
"""

from __future__ import annotations

import datetime
import json
import operator
import typing
import uuid

import sqlalchemy as sa

from cqrs.saga.storage.enums import RESUMABLE, SagaStepStatus
from cqrs.saga.storage.models import Lease, SagaClaim, SagaLogEntry, SagaRecord
from cqrs.saga.storage.sqlalchemy import _transactions
from cqrs.saga.storage.sqlalchemy._claim_batches import ClaimBatches, Key
from cqrs.saga.storage.sqlalchemy._claim_statements import ClaimStatements
from cqrs.saga.storage.sqlalchemy._schema import claims, log_entry, record

if typing.TYPE_CHECKING:
    from cqrs.saga.storage.sqlalchemy._executors import Executor
    from cqrs.saga.storage.sqlalchemy._statements import Statements

__all__ = ["Claims"]

Row = typing.Sequence[typing.Any]
Params = dict[str, typing.Any]
_UTC = datetime.timezone.utc
_by_seq = operator.attrgetter("seq")
#: Where a PostgreSQL claim row holds ``fresh``, the history and ``retry`` (after the 15 record columns).
_FRESH, _HISTORY, _RETRY = 15, 16, 17


def _uuid(value: typing.Any) -> uuid.UUID:
    return value if type(value) is uuid.UUID else uuid.UUID(str(value))  # asyncpg has a UUID type of its own


def _instant(text: str) -> datetime.datetime:
    """A log row's ``created_at`` as a JSON value: ISO text with an offset (PostgreSQL) or UTC without (SQLite)."""
    value = datetime.datetime.fromisoformat(text)
    return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)


def history_of(saga_id: uuid.UUID, value: typing.Any) -> list[SagaLogEntry]:
    """A history read as one JSON array of ``[step_name, action, status, created_at, details, response, seq]``."""
    if value is None:  # PostgreSQL's json_agg of no rows
        return []
    if isinstance(value, str):  # a driver that hands JSON over as text
        value = json.loads(value)
    entries = [
        SagaLogEntry(saga_id, step_name, action, SagaStepStatus(status), _instant(at), details, response, seq)
        for step_name, action, status, at, details, response, seq in value
    ]
    entries.sort(key=_by_seq)  # SQLite's json_group_array keeps no promised order
    return entries


def _joined(rows: typing.Iterable[Row]) -> tuple[list[SagaRecord], list[SagaLogEntry]]:
    """MySQL: rows of a saga's columns and one of its log rows each (NULL log columns: no entries)."""
    records: dict[typing.Any, SagaRecord] = {}
    entries: list[SagaLogEntry] = []
    for row in rows:
        found = records.get(row[0])
        if found is None:
            found = records[row[0]] = record(row)
        if row[-1] is not None:
            entries.append(log_entry((found.saga_id, *row[15:])))
    return list(records.values()), entries


class Claims:
    """The storage's claims, on its executor and statements."""

    def __init__(self, executor: Executor, sql: Statements) -> None:
        self._executor = executor
        self._sql = sql
        self._statements = ClaimStatements(sql)
        self._batches = ClaimBatches(self._claim_batch)

    async def claim_saga(self, saga_id: uuid.UUID, owner: str, lease_seconds: float) -> SagaClaim | None:
        """See `SqlAlchemySagaStorage.claim_saga`."""
        params: Params = {"b_id": saga_id, "b_owner": owner, "b_lease_seconds": lease_seconds}
        if not self._sql.postgres:
            return await self._executor.transaction(lambda conn: self._claim_one(conn, params))
        row = await self._batches.claim((owner, lease_seconds), saga_id)
        if row is not None and row[_RETRY]:
            # Claimable, but its row was locked (or changed) when the batch came: wait for it alone.
            rows = await self._executor.fetch(self._statements.claim_one(), params)
            row = rows[0] if rows else None
        if row is None:
            return None
        claimed = record(row)
        fresh = row[_FRESH]
        if fresh is None:  # the stored row: another runner's lease has not expired, or nothing to run
            history = history_of(claimed.saga_id, row[_HISTORY])
            return SagaClaim(record=claimed, history=history, lease=None, busy=claimed.status in RESUMABLE)
        if fresh:
            history = history_of(claimed.saga_id, row[_HISTORY])
        else:
            history = [log_entry(r) for r in await self._executor.read(self._sql.history, {"b_id": saga_id})]
        return SagaClaim(record=claimed, history=history, lease=Lease(owner=owner, epoch=claimed.lease_epoch))

    async def _claim_batch(self, key: Key, saga_ids: list[uuid.UUID]) -> dict[uuid.UUID, Row]:
        """PostgreSQL: the one-saga claims of ``saga_ids`` in one statement; each stored saga's row."""
        owner, lease_seconds = key
        params = {"b_ids": saga_ids, "b_owner": owner, "b_lease_seconds": lease_seconds}
        return {_uuid(row[0]): row for row in await self._executor.fetch(self._statements.claim_ids(), params)}

    def _claim_one(self, conn: sa.Connection, params: Params) -> SagaClaim | None:
        """SQLite and MySQL, in one transaction."""
        statements = self._statements
        if self._sql.mysql:
            granted = conn.execute(statements.claim_one(), params).rowcount == 1
            records, entries = _joined(conn.execute(statements.get_one(), params))
            if not records:
                return None
            claimed, history = records[0], entries
        else:
            row = conn.execute(statements.claim_one(), params).first()
            granted = row is not None
            if row is None:
                row = conn.execute(statements.get_one(), params).first()
                if row is None:
                    return None
            claimed = record(row)
            history = history_of(claimed.saga_id, row[-1])
        if granted:
            lease = Lease(owner=params["b_owner"], epoch=claimed.lease_epoch)
            return SagaClaim(record=claimed, history=history, lease=lease)
        # Resumable but not granted: another runner's lease has not expired.
        return SagaClaim(record=claimed, history=history, lease=None, busy=claimed.status in RESUMABLE)

    async def claim_recoverable(
        self,
        owner: str,
        lease_seconds: float,
        *,
        limit: int,
        names: typing.Collection[str] | None,
        max_attempts: int | None,
    ) -> list[SagaClaim]:
        """See `SqlAlchemySagaStorage.claim_recoverable`."""
        if limit <= 0:
            return []
        params: Params = {"b_owner": owner, "b_lease_seconds": lease_seconds, "b_limit": limit}
        if names is not None:
            params["b_names"] = list(names)
        if max_attempts is not None:
            params["b_max_attempts"] = max_attempts
        by_name, by_attempts = names is not None, max_attempts is not None
        sql, statements = self._sql, self._statements
        if sql.mysql:

            def claim_mysql(conn: sa.Connection) -> list[SagaClaim]:
                locked = _transactions.claim_recoverable_mysql(
                    conn, sql, params, limit=limit, names=by_name, max_attempts=by_attempts
                )
                if not locked:
                    return []
                return claims(*_joined(conn.execute(statements.get_many(), {"b_ids": locked})), owner)

            return await self._executor.transaction(claim_mysql)
        statement = statements.claim_many(by_name, by_attempts)
        if not sql.postgres:
            returned = await self._executor.transaction(lambda conn: conn.execute(statement, params).all())
            records = [record(row) for row in returned]
            entries = [e for r, row in zip(records, returned, strict=True) for e in history_of(r.saga_id, row[-1])]
            return claims(records, entries, owner)
        rows = await self._executor.fetch(statement, params)
        records = [record(row) for row in rows]
        entries = []
        stale = []
        for claimed, row in zip(records, rows, strict=True):
            if row[_FRESH]:
                entries += history_of(claimed.saga_id, row[_HISTORY])
            else:
                stale.append(claimed.saga_id)
        if stale:
            entries += [log_entry(r) for r in await self._executor.read(sql.histories, {"b_ids": stale})]
        return claims(records, entries, owner)
