"""Checkpoints that append several log rows in one commit (a failed saga's compensations, recorded together).

On PostgreSQL it is still one statement: ``WITH u AS (UPDATE ... RETURNING id)
INSERT INTO saga_log ... SELECT ... FROM u JOIN jsonb_to_recordset(:b_entries)``
(plus the outbox rows, as a checkpoint with messages has them), the rows one
JSON array parameter, so the asyncpg fast path runs it too. Elsewhere the
fenced ``UPDATE`` is followed, in the same transaction, by one executemany of
the log rows.
"""

from __future__ import annotations

import typing
import uuid

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect

from cqrs.saga.storage.enums import SagaStepStatus
from cqrs.saga.storage.models import StepEntry
from cqrs.saga.storage.sqlalchemy._schema import LOG_INSERT_COLUMNS, saga_executions, saga_log
from cqrs.saga.storage.sqlalchemy._statements import Statements

__all__ = ["entries_json", "entries_rows", "logged_entries"]


def entries_json(entries: typing.Sequence[StepEntry]) -> list[dict[str, typing.Any]]:
    """PostgreSQL: the entries as the JSON array `logged_entries` expands (``position`` keeps their order)."""
    return [
        {
            "step_name": entry.step_name,
            "action": entry.action,
            "status": SagaStepStatus(entry.status).value,
            "details": entry.details,
            "response": entry.response,
            "position": position,
        }
        for position, entry in enumerate(entries)
    ]


def entries_rows(
    sql: Statements, saga_id: uuid.UUID, entries: typing.Sequence[StepEntry]
) -> list[dict[str, typing.Any]]:
    """SQLite and MySQL: one parameter set of ``sql.append`` per entry."""
    return [{"b_id": saga_id, **sql.entry_params(entry)} for entry in entries]


def logged_entries(sql: Statements, update: sa.Update, outbox: bool) -> typing.Any:
    """PostgreSQL: the fenced ``update`` with its log rows (and, with ``outbox``, its outbox rows) in one
    statement. Its row count is the rows inserted by its last part: 0 if the update did not match."""
    updated = update.returning(saga_executions.c.id).cte("u")
    rows = (
        sa.func.jsonb_to_recordset(sql.bind("entries", saga_log.c.response))
        .table_valued(
            sa.column("step_name", sa.Text()),
            sa.column("action", sa.Text()),
            sa.column("status", sa.Text()),
            sa.column("details", sa.Text()),
            sa.column("response", pg_dialect.JSONB()),
            sa.column("position", sa.Integer()),
        )
        .render_derived(name="e", with_types=True)
    )
    e = rows.c
    log = sa.insert(saga_log).from_select(
        LOG_INSERT_COLUMNS,
        sa.select(updated.c.id, e.step_name, e.action, e.status, e.details, e.response, sql.now)
        .select_from(updated.join(rows, sa.true()))
        .order_by(e.position),  # the log's ids in the order the compensations ran
    )
    if not outbox:
        return log
    return sql.outbox.inserted_from(updated).add_cte(log.cte("l"))
