"""The outbox's multi-statement transactions (SQLite and MySQL/MariaDB), as functions of one SQLAlchemy connection.

Each runs inside `Executor.transaction`: its statements commit together or not
at all. PostgreSQL needs none of them (its outbox writes and claims are single
statements).
"""

from __future__ import annotations

import typing

import sqlalchemy as sa

from cqrs.saga.storage.sqlalchemy._statements import Statements

__all__ = ["claim_mysql", "purge_mysql", "start_with_outbox"]

Params = typing.Mapping[str, typing.Any]
Row = typing.Sequence[typing.Any]

_MYSQL_DUPLICATE_KEY = 1062


def start_with_outbox(conn: sa.Connection, sql: Statements, params: Params, rows: typing.Sequence[Params]) -> bool:
    """A start with outbox messages: the saga's ``INSERT``, then its outbox rows only if it was inserted.

    False (nothing written) when the saga id is taken. On MySQL that is the saga ``INSERT``'s
    duplicate key, told apart from a duplicate message id, which fails the whole start.
    """
    if sql.mysql:
        try:
            conn.execute(sql.start, params)  # the transaction's first statement: on error nothing is written
        except sa.exc.IntegrityError as error:
            if getattr(error.orig, "args", ())[:1] == (_MYSQL_DUPLICATE_KEY,):
                return False
            raise
    elif conn.execute(sql.start, params).rowcount != 1:
        return False
    conn.execute(sql.outbox.insert, rows)
    return True


def claim_mysql(conn: sa.Connection, sql: Statements, params: Params, limit: int) -> list[Row]:
    """Claim up to ``limit`` rows on MySQL/MariaDB, in ``seq`` order (see `_outbox_statements`).

    Candidates are read without locks, a window at a time; those still due and free are locked
    by primary key with ``FOR UPDATE SKIP LOCKED`` (concurrent claimers lock different rows and
    move on), leased and read back. In READ COMMITTED, so each read sees what was committed before it.
    """
    osql = sql.outbox
    conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")  # before the transaction's first read
    window = max(4 * limit, 32)
    locked: list[int] = []
    after = 0
    while len(locked) < limit:
        candidates = list(conn.execute(osql.candidates(), {"b_after": after, "b_window": window}).scalars())
        if candidates:
            held = conn.execute(osql.lock(), {"b_seqs": candidates, "b_limit": limit - len(locked)}).scalars()
            locked += list(held)
        if len(candidates) < window:
            break
        after = candidates[-1]
    if not locked:
        return []
    conn.execute(osql.claim_seqs(), {**params, "b_seqs": locked})
    return list(conn.execute(osql.by_seqs, {"b_seqs": locked}).all())


def purge_mysql(conn: sa.Connection, sql: Statements, params: Params) -> int:
    """`purge_outbox` on MySQL/MariaDB: the oldest published rows' seqs, then their ``DELETE``."""
    seqs = list(conn.execute(sql.outbox.purgeable, params).scalars())
    if not seqs:
        return 0
    return int(conn.execute(sql.outbox.purge, {"b_seqs": seqs}).rowcount)
