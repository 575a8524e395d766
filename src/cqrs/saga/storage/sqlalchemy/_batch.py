"""Group commit's statement: many sagas' starts and checkpoints in one PostgreSQL statement, and their JSON.

A batch is two parameters, JSON arrays of starts and of checkpoints (at most
one of either per saga), expanded by ``jsonb_to_recordset``::

    WITH s AS (INSERT INTO saga_executions ... SELECT ... FROM jsonb_to_recordset(CAST($1 AS JSONB)) AS n(...)
               ON CONFLICT (id) DO NOTHING RETURNING id),
         b AS (SELECT * FROM jsonb_to_recordset(CAST($1 AS JSONB)) AS b(id UUID, owner TEXT, ...)),
         u AS (UPDATE saga_executions SET ... FROM b
               WHERE saga_executions.id = ANY(ARRAY(SELECT id FROM b))
                 AND saga_executions.id = b.id AND owner = b.owner AND lease_epoch = b.epoch
               RETURNING saga_executions.id),
         l AS (INSERT INTO saga_log ... SELECT ... FROM u JOIN b ON b.id = u.id WHERE b.entry IS true),
         o AS (INSERT INTO saga_outbox ... SELECT ... FROM u JOIN b ON b.id = u.id
               JOIN jsonb_to_recordset(b.outbox) AS m(...) ON true ORDER BY m.position)
    SELECT u.id FROM u UNION ALL SELECT s.id FROM s

A start is what `Statements.start` inserts (its id returned only if it was
free); a checkpoint is what `Statements.checkpoint` writes, fenced the same way:
a saga's log row and outbox rows are inserted only if its own fenced update
matched, and the ids returned are the checkpoints that were written (the
others lost their lease). A checkpoint's absent values are JSON ``null``
(SQL ``NULL`` after expansion) and leave the column as it is: ``context``,
``status`` and ``error`` are never set to ``NULL`` by a checkpoint.

All of it is one autocommitted statement: one round trip and one commit for
the whole batch, and either every matched checkpoint of the batch is written
or none is.
"""

from __future__ import annotations

import json
import typing
import uuid

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from cqrs.outbox.models import OutboxMessage, OutboxStatus
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import Lease, NewSaga, StepEntry
from cqrs.saga.storage.sqlalchemy._outbox import outbox_json_rows
from cqrs.saga.storage.sqlalchemy._outbox_schema import saga_outbox
from cqrs.saga.storage.sqlalchemy._schema import LOG_INSERT_COLUMNS, Clock, literal, saga_executions, saga_log

__all__ = ["BATCH_PARAM", "STARTS_PARAM", "batch_statement", "encode_checkpoint", "encode_start", "join_batch"]

#: The statement's parameters: the checkpoints, and the starts, as JSON text.
BATCH_PARAM = "b_batch"
STARTS_PARAM = "b_starts"
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
_OUTBOX_COLUMNS = ["message_id", "saga_id", "topic", "name", "payload", "headers", "status", "attempts", "created_at"]


def encode_checkpoint(
    saga_id: uuid.UUID,
    lease: Lease,
    entry: StepEntry | None,
    context: dict[str, typing.Any] | None,
    status: SagaStatus | None,
    error: str | None,
    lease_seconds: float,
    release: bool,
    outbox: typing.Sequence[OutboxMessage],
) -> str:
    """One checkpoint as a JSON object of the batch (raises ``TypeError``/``ValueError`` for a value JSON
    cannot hold, before anything is queued)."""
    item: dict[str, typing.Any] = {
        "id": str(saga_id),
        "owner": lease.owner,
        "epoch": lease.epoch,
        "lease_seconds": lease_seconds,
        "release": release,
        "context": context,
        "status": None if status is None else SagaStatus(status).value,
        "error": error,
    }
    if entry is not None:
        item["entry"] = True
        item["step_name"] = entry.step_name
        item["action"] = entry.action
        item["step_status"] = SagaStepStatus(entry.status).value
        item["details"] = entry.details
        item["response"] = entry.response
    if outbox:
        item["outbox"] = outbox_json_rows(outbox)
    return _COMPACT_JSON.encode(item)


def encode_start(saga: NewSaga, owner: str, lease_seconds: float) -> str:
    """A start (without outbox messages) as a JSON object of the batch."""
    return _COMPACT_JSON.encode({
        "id": str(saga.saga_id),
        "name": saga.name,
        "definition_version": saga.definition_version,
        "status": SagaStatus(saga.status).value,
        "context": saga.context,
        "correlation_id": saga.correlation_id,
        "trace_context": saga.trace_context,
        "owner": owner,
        "lease_seconds": lease_seconds,
    })


def join_batch(items: typing.Iterable[str]) -> str:
    """The batch parameter: the encoded checkpoints as one JSON array."""
    return "[" + ",".join(items) + "]"


def batch_statement() -> sa.Select[typing.Any]:
    """The batch statement (see the module doc); its rows are the ids of the sagas whose start or checkpoint was
    written."""
    t, lg, o = saga_executions, saga_log, saga_outbox
    clock = Clock("postgresql")
    now = clock.now
    one, zero = sa.literal_column("1", sa.Integer()), sa.literal_column("0", sa.Integer())
    new = (
        sa.func.jsonb_to_recordset(sa.cast(sa.bindparam(STARTS_PARAM, type_=sa.Text()), pg.JSONB()))
        .table_valued(
            sa.column("id", pg.UUID(as_uuid=True)),
            sa.column("name", sa.Text()),
            sa.column("definition_version", sa.Integer()),
            sa.column("status", sa.Text()),
            sa.column("context", pg.JSONB()),
            sa.column("correlation_id", sa.Text()),
            sa.column("trace_context", pg.JSONB()),
            sa.column("owner", sa.Text()),
            sa.column("lease_seconds", sa.Float()),
        )
        .render_derived(name="n", with_types=True)
    )
    n = new.c
    started = (
        pg.insert(t)
        .from_select(
            ["id", "name", "definition_version", "status", "context", "version", "correlation_id", "owner",
             "lease_epoch", "lease_expires_at", "recovery_attempts", "created_at", "updated_at", "trace_context"],
            sa.select(n.id, n.name, n.definition_version, n.status, n.context, one, n.correlation_id, n.owner,
                      one, clock.shifted(n.lease_seconds), zero, now, now, n.trace_context),
        )
        .on_conflict_do_nothing(index_elements=[t.c.id])
        .returning(t.c.id)
        .cte("s")
    )
    records = (
        sa.func.jsonb_to_recordset(sa.cast(sa.bindparam(BATCH_PARAM, type_=sa.Text()), pg.JSONB()))
        .table_valued(
            sa.column("id", pg.UUID(as_uuid=True)),
            sa.column("owner", sa.Text()),
            sa.column("epoch", sa.Integer()),
            sa.column("lease_seconds", sa.Float()),
            sa.column("release", sa.Boolean()),
            sa.column("context", pg.JSONB()),
            sa.column("status", sa.Text()),
            sa.column("error", sa.Text()),
            sa.column("entry", sa.Boolean()),
            sa.column("step_name", sa.Text()),
            sa.column("action", sa.Text()),
            sa.column("step_status", sa.Text()),
            sa.column("details", sa.Text()),
            sa.column("response", pg.JSONB()),
            sa.column("outbox", pg.JSONB()),
        )
        .render_derived(name="r", with_types=True)
    )
    b = sa.select(records).cte("b")
    released = b.c.release
    updated = (
        sa.update(t)
        .where(
            # The ids as an array too: the planner then looks them up in the primary key (it takes the
            # batch for 100 rows and would rather scan a small table than probe it 100 times).
            t.c.id == sa.any_(sa.func.array(sa.select(b.c.id).scalar_subquery())),
            t.c.id == b.c.id,
            t.c.owner == b.c.owner,
            t.c.lease_epoch == b.c.epoch,
        )
        .values(
            version=t.c.version + one,
            updated_at=now,
            context=sa.func.coalesce(b.c.context, t.c.context),
            status=sa.func.coalesce(b.c.status, t.c.status),
            error=sa.func.coalesce(b.c.error, t.c.error),
            owner=sa.case((released, sa.null()), else_=t.c.owner),
            lease_expires_at=sa.case((released, sa.null()), else_=clock.shifted(b.c.lease_seconds)),
        )
        .returning(t.c.id)
        .cte("u")
    )
    matched = updated.join(b, b.c.id == updated.c.id)
    log = sa.insert(lg).from_select(
        LOG_INSERT_COLUMNS,
        sa.select(updated.c.id, b.c.step_name, b.c.action, b.c.step_status, b.c.details, b.c.response, now)
        .select_from(matched)
        .where(b.c.entry.is_(True)),
    )
    messages = (
        sa.func.jsonb_to_recordset(b.c.outbox)
        .table_valued(
            sa.column("message_id", pg.UUID(as_uuid=True)),
            sa.column("topic", sa.Text()),
            sa.column("name", sa.Text()),
            sa.column("payload", pg.JSONB()),
            sa.column("headers", pg.JSONB()),
            sa.column("position", sa.Integer()),
        )
        .render_derived(name="m", with_types=True)
    )
    m = messages.c
    rows = (
        sa.select(
            m.message_id, updated.c.id, m.topic, m.name, m.payload, m.headers,
            literal(OutboxStatus.PENDING.value), zero, now,
        )
        .select_from(matched.join(messages, sa.true()))
        .order_by(updated.c.id, m.position)  # seq in the order each step emitted them
    )
    outbox = sa.insert(o).from_select(_OUTBOX_COLUMNS, rows)
    written = sa.union_all(sa.select(updated.c.id), sa.select(started.c.id))
    return typing.cast("sa.Select[typing.Any]", written.add_cte(log.cte("l")).add_cte(outbox.cte("o")))
