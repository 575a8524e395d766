"""The multi-statement transactions of SQLite and MySQL/MariaDB, as functions of one SQLAlchemy connection.

Each runs inside `Executor.transaction`, so its statements commit together or
not at all (a checkpoint's update and log row are `Executor.write_then`). On
SQLite every one starts with its write statement, so the transaction holds
the database's write lock from its first statement (no ``BEGIN IMMEDIATE``
needed, and two processes never both claim a saga).
PostgreSQL needs none of these: its writes are single statements. (The claims,
with their histories, are `_claims`'.)
"""

from __future__ import annotations

import typing
import uuid

import sqlalchemy as sa

from cqrs.saga.storage.sqlalchemy._statements import Statements

__all__ = ["claim_recoverable_mysql", "purge"]

Params = typing.Mapping[str, typing.Any]




def claim_recoverable_mysql(
    conn: sa.Connection, sql: Statements, params: Params, *, limit: int, names: bool, max_attempts: bool
) -> list[uuid.UUID]:
    """Claim up to ``limit`` sagas on MySQL/MariaDB, oldest expiry first; their ids (`_claims` reads them back).

    A locking read with ``ORDER BY ... LIMIT`` would lock every candidate its sort reads, and a
    concurrent claimer would skip them all and claim nothing. So the candidates are read without
    locks, a window of them at a time, then locked by primary key a few at a time with ``FOR UPDATE
    SKIP LOCKED`` (the conditions checked again on the latest row versions) until ``limit`` are
    held: concurrent claimers take successive candidates. The locked sagas are then updated by id
    (`_claims` reads them back with their histories, in the same transaction).

    In READ COMMITTED, so that every read sees what was committed before it: under MySQL's default
    REPEATABLE READ the histories would be read in the snapshot of the candidates' read, and miss a
    log row the former holder committed before the claim locked its saga (see `_claim_statements`).
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
    if locked:
        conn.execute(sql.claim_ids(), {**params, "b_ids": locked})
    return locked


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
