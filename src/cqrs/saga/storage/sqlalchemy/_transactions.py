"""The multi-statement transactions of SQLite and MySQL/MariaDB, as functions of one SQLAlchemy connection.

Each runs inside `Executor.transaction`, so its statements commit together or
not at all (a checkpoint's update and log row are `Executor.write_then`). On
SQLite every one starts with its write statement, so the transaction holds
the database's write lock from its first statement (no ``BEGIN IMMEDIATE``
needed, and two processes never both claim a saga).
PostgreSQL needs none of these: its writes are single statements, and its
claims read the histories in a statement of their own after the claim.
"""

from __future__ import annotations

import typing
import uuid

import sqlalchemy as sa

from cqrs.saga.storage.enums import RESUMABLE
from cqrs.saga.storage.models import Lease, SagaClaim
from cqrs.saga.storage.sqlalchemy._schema import claims, log_entry, record
from cqrs.saga.storage.sqlalchemy._statements import Statements

__all__ = ["claim_recoverable_mysql", "claim_recoverable_sqlite", "claim_saga", "purge"]

Params = typing.Mapping[str, typing.Any]


def claim_saga(conn: sa.Connection, sql: Statements, params: Params) -> SagaClaim | None:
    """`claim_saga`: the conditional ``UPDATE`` (``RETURNING`` on SQLite), the record if needed, the history."""
    if sql.mysql:
        granted = conn.execute(sql.claim, params).rowcount == 1
        row = None
    else:
        row = conn.execute(sql.claim, params).first()
        granted = row is not None
    if row is None:
        row = conn.execute(sql.get, params).first()
        if row is None:
            return None
    claimed = record(row)
    history = [log_entry(r) for r in conn.execute(sql.history, params)]
    if granted:
        lease = Lease(owner=params["b_owner"], epoch=claimed.lease_epoch)
        return SagaClaim(record=claimed, history=history, lease=lease)
    # Resumable but not granted: another runner's lease has not expired.
    return SagaClaim(record=claimed, history=history, lease=None, busy=claimed.status in RESUMABLE)


def claim_recoverable_sqlite(
    conn: sa.Connection, sql: Statements, claim: typing.Any, params: Params
) -> list[SagaClaim]:
    """One ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING``, then the claimed sagas' histories."""
    records = [record(row) for row in conn.execute(claim, params)]
    if not records:
        return []
    rows = conn.execute(sql.histories, {"b_ids": [r.saga_id for r in records]})
    return claims(records, (log_entry(row) for row in rows), params["b_owner"])


def claim_recoverable_mysql(
    conn: sa.Connection, sql: Statements, params: Params, *, limit: int, names: bool, max_attempts: bool
) -> list[SagaClaim]:
    """Claim up to ``limit`` sagas on MySQL/MariaDB, oldest expiry first.

    A locking read with ``ORDER BY ... LIMIT`` would lock every candidate its sort reads, and a
    concurrent claimer would skip them all and claim nothing. So the candidates are read without
    locks, a window of them at a time, then locked by primary key a few at a time with ``FOR UPDATE
    SKIP LOCKED`` (the conditions checked again on the latest row versions) until ``limit`` are
    held: concurrent claimers take successive candidates. The locked sagas are then updated by id
    and read back with their histories.

    In READ COMMITTED, so that every read sees what was committed before it: under MySQL's default
    REPEATABLE READ the histories would be read in the snapshot of the candidates' read, and miss a
    log row the former holder committed before the claim locked its saga (see `Statements.histories`).
    """
    conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")  # before the transaction's first read
    window = max(4 * limit, 32)
    locked: list[uuid.UUID] = []
    examined: list[uuid.UUID] = []
    lock = sql.lock_recoverable(names, max_attempts)
    while len(locked) < limit:
        candidates = list(
            conn.execute(
                sql.recoverable_candidates(names, max_attempts, exclude=bool(examined)),
                {**params, "b_window": window, "b_exclude": examined},
            ).scalars()
        )
        pending = candidates
        while pending and len(locked) < limit:
            chunk, pending = pending[: limit - len(locked)], pending[limit - len(locked):]
            held = set(conn.execute(lock, {**params, "b_ids": chunk}).scalars())
            locked += [saga_id for saga_id in chunk if saga_id in held]
        if len(candidates) < window:
            break
        examined += candidates
    if not locked:
        return []
    conn.execute(sql.claim_ids(), {**params, "b_ids": locked})
    records = [record(row) for row in conn.execute(sql.records, {"b_ids": locked})]
    histories = (log_entry(row) for row in conn.execute(sql.histories, {"b_ids": locked}))
    return claims(records, histories, params["b_owner"])


def purge(conn: sa.Connection, sql: Statements, statements: tuple[typing.Any, ...], params: Params) -> int:
    """`purge_sagas` on SQLite (three ``DELETE``) or MySQL (pick, lock, three ``DELETE`` by id); how many sagas
    went."""
    if not sql.mysql:
        deleted = 0
        for statement in statements:
            deleted = conn.execute(statement, params).rowcount  # the last one deletes the sagas
        return deleted
    doomed, lock, *deletes, delete_sagas = statements
    candidates = list(conn.execute(doomed, params).scalars())
    if not candidates:
        return 0
    ids = list(conn.execute(lock, {"b_ids": candidates}).scalars())
    if not ids:
        return 0
    for delete in deletes:  # the log rows, the published outbox rows
        conn.execute(delete, {"b_ids": ids})
    return int(conn.execute(delete_sagas, {"b_ids": ids}).rowcount)
