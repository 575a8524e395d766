"""The outbox table: messages written in the same commit as a saga's start or checkpoint, until a relay publishes them.

``saga_outbox`` (in ``Base.metadata``, created by `create_tables` with the
saga tables), one row per message. ``seq`` (an autoincrementing bigint, never
reused: ``AUTOINCREMENT`` on SQLite) is the order: a saga's messages are
published in ``seq`` order, and a step's messages get their ``seq`` in the
order the step emitted them. ``status`` is ``pending``, ``published`` or
``parked``; ``owner`` and ``lease_expires_at`` are a relay's claim;
``next_attempt_at`` is when a failed row may be tried again; ``attempts``
counts failed publications and ``error`` keeps the last one's.

The indexes and what each serves:

- ``ix_saga_outbox_status_seq (status, seq)``: the claims (pending rows in
  ``seq`` order; the first rows of the range are the oldest, and a claim
  stops after ``limit`` of them), `outbox_backlog` (a count over the pending
  range), ``list_outbox(status=...)``.
- ``ix_saga_outbox_saga_id_seq (saga_id, seq)``: the per-saga order test of a
  claim (is there an earlier unpublished row of this saga?), ``list_outbox(
  saga_id=...)`` and `purge_sagas` (a purged saga's published rows go with it).
- ``ux_saga_outbox_message_id (message_id)``, unique: one row per message id
  (a second row with the same id makes the whole commit fail: nothing of the
  checkpoint is written), and `requeue_outbox` by id.
- ``ix_saga_outbox_status_published (status, published_at)``: `purge_outbox`
  (published rows older than a cutoff, oldest first), a range however many
  newer rows are kept.

``saga_id`` has no foreign key, as ``saga_log.saga_id`` has none: every row
is written by a statement or transaction that matched its saga's row, and a
purged saga's unpublished rows stay to be published.
"""

from __future__ import annotations

import datetime
import typing
import uuid

import sqlalchemy as sa

from cqrs.outbox.models import OutboxRecord, OutboxStatus
from cqrs.saga.storage.sqlalchemy._schema import Base, Id, Json, Timestamp

__all__ = ["OUTBOX_COLUMNS", "outbox_record", "saga_outbox"]

_UTC = datetime.timezone.utc

saga_outbox = sa.Table(
    "saga_outbox",
    Base.metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("message_id", Id, nullable=False),
    sa.Column("saga_id", Id, nullable=False),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("payload", Json, nullable=False),
    sa.Column("headers", Json, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("next_attempt_at", Timestamp, nullable=True),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("lease_expires_at", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("published_at", Timestamp, nullable=True),
    sqlite_autoincrement=True,
)

_o = saga_outbox
sa.Index("ix_saga_outbox_status_seq", _o.c.status, _o.c.seq)
sa.Index("ix_saga_outbox_saga_id_seq", _o.c.saga_id, _o.c.seq)
sa.Index("ux_saga_outbox_message_id", _o.c.message_id, unique=True)
sa.Index("ix_saga_outbox_status_published", _o.c.status, _o.c.published_at)

OUTBOX_COLUMNS = (
    _o.c.seq,
    _o.c.message_id,
    _o.c.saga_id,
    _o.c.topic,
    _o.c.name,
    _o.c.payload,
    _o.c.headers,
    _o.c.status,
    _o.c.attempts,
    _o.c.error,
    _o.c.created_at,
    _o.c.published_at,
    _o.c.next_attempt_at,
    _o.c.owner,
    _o.c.lease_expires_at,
)


_STATUSES = {status.value: status for status in OutboxStatus}  # a dict lookup is faster than OutboxStatus(value)


def _uuid(value: typing.Any) -> uuid.UUID:
    return value if type(value) is uuid.UUID else uuid.UUID(str(value))  # (asyncpg has a UUID type of its own)


def _aware(value: datetime.datetime | None) -> datetime.datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=_UTC)


def outbox_record(row: typing.Sequence[typing.Any]) -> OutboxRecord:
    """An `OutboxRecord` from a row of `OUTBOX_COLUMNS`."""
    (seq, message_id, saga_id, topic, name, payload, headers, status, attempts, error, created_at, published_at,
     next_attempt_at, owner, lease_expires_at) = row
    return OutboxRecord(
        seq=int(seq),
        message_id=_uuid(message_id),
        saga_id=_uuid(saga_id),
        topic=topic,
        name=name,
        payload=payload,
        headers=dict(headers or {}),
        status=_STATUSES[status],
        attempts=attempts,
        error=error,
        created_at=_aware(created_at),
        published_at=_aware(published_at),
        next_attempt_at=_aware(next_attempt_at),
        owner=owner,
        lease_expires_at=_aware(lease_expires_at),
    )
