"""The saga tables, their column types, the database clock, and rows turned into records.

Tables (in ``Base.metadata``) and the query each index serves:

``saga_executions``, one row per saga (primary key ``id``: `get_saga`,
`claim_saga`, and every conditional write ``WHERE id = :id AND owner = :owner
AND lease_epoch = :epoch``):

- ``ix_saga_executions_status_created (status, created_at)``: the recovery
  scans (`claim_recoverable`, ``list_sagas(recoverable=True)``: a range per
  unfinished status, so the finished sagas are never read), and
  ``list_sagas(status=...)``, oldest first, with ``older_than``. No index
  holds ``lease_expires_at`` or ``updated_at``, so a checkpoint that leaves
  the status alone is a HOT update on PostgreSQL (no index is written). The
  queries spell the statuses as literals, not parameters.
- ``ix_saga_executions_name_created (name, created_at)``:
  ``list_sagas(name=...)``, oldest first, with ``older_than``.
- ``ix_saga_executions_correlation_id (correlation_id)``:
  ``list_sagas(correlation_id=...)``.

``cqrs_saga_schema``, one row: the schema version the storage wrote
(`SCHEMA_VERSION`; see `_layout` for the versions and how an unrecorded one
is told from the tables themselves).

``saga_log``, one row per step outcome; ``seq`` (an autoincrementing bigint)
is the order of history, timestamps never are:

- ``ix_saga_log_saga_id_seq (saga_id, seq)``: a saga's history in order
  (`claim_saga`, `get_history`, `reset_saga`) and `purge_sagas`.
  ``saga_id`` has no foreign key (see the column's comment); `purge_sagas`
  deletes a saga's log rows with it.

Time comes from the database (``now()`` on PostgreSQL, ``'now'`` on SQLite,
``UTC_TIMESTAMP(6)`` on MySQL and MariaDB), never from the host's clock, for
lease expiries, "expired" tests and ages. On PostgreSQL timestamps are
``timestamptz``; on MySQL and MariaDB ``DATETIME(6)`` holding UTC. On SQLite
they are stored as UTC text ``YYYY-MM-DD HH:MM:SS.SSS`` (what
``strftime('%Y-%m-%d %H:%M:%f')`` writes): fixed width, so comparing the
strings compares the instants, to the millisecond. Every timestamp the API
returns is a timezone-aware UTC datetime.
"""

from __future__ import annotations

import collections
import datetime
import typing
import uuid

import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.orm import DeclarativeBase

from cqrs.saga.storage.enums import RESUMABLE, SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import Lease, SagaClaim, SagaLogEntry, SagaRecord

__all__ = [
    "LOG_COLUMNS",
    "LOG_INSERT_COLUMNS",
    "RECORD_COLUMNS",
    "RESUMABLE_CLAUSE",
    "SCHEMA_VERSION",
    "TABLES",
    "Base",
    "Clock",
    "Id",
    "Json",
    "Timestamp",
    "claims",
    "database_now",
    "family",
    "literal",
    "log_entry",
    "record",
    "saga_executions",
    "saga_log",
    "saga_schema",
]

Row = typing.Sequence[typing.Any]
_UTC = datetime.timezone.utc
_EARLIEST = datetime.datetime.min.replace(tzinfo=_UTC)
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%f"  # SQLite's strftime: %f is SS.SSS
_PY_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # the same text from Python, cut to milliseconds


def family(dialect_name: str) -> str:
    """``postgresql``, ``sqlite`` or ``mysql`` (MySQL and MariaDB share one family of statements)."""
    return "mysql" if dialect_name in ("mysql", "mariadb") else dialect_name


class Base(DeclarativeBase):
    """Declarative base whose ``metadata`` holds the saga tables (give it to Alembic)."""


class _SqliteTimestamp(sa.types.TypeDecorator[datetime.datetime]):
    """A UTC instant as fixed-width text on SQLite, so string order is time order."""

    impl = sa.String(23)
    cache_ok = True

    def process_bind_param(self, value: datetime.datetime | None, dialect: sa.Dialect) -> str | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(_UTC)
        return value.strftime(_PY_FORMAT)[:23]

    def process_result_value(self, value: typing.Any, dialect: sa.Dialect) -> datetime.datetime | None:
        if value is None:
            return None
        return datetime.datetime.fromisoformat(value).replace(tzinfo=_UTC)


class _MysqlTimestamp(sa.types.TypeDecorator[datetime.datetime]):
    """A UTC instant as ``DATETIME(6)`` on MySQL and MariaDB (which have no time zone type)."""

    impl = mysql_dialect.DATETIME(fsp=6)
    cache_ok = True

    def process_bind_param(self, value: datetime.datetime | None, dialect: sa.Dialect) -> datetime.datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(_UTC).replace(tzinfo=None)

    def process_result_value(self, value: typing.Any, dialect: sa.Dialect) -> datetime.datetime | None:
        return None if value is None else typing.cast(datetime.datetime, value).replace(tzinfo=_UTC)


#: timestamptz on PostgreSQL, UTC text on SQLite, UTC DATETIME(6) on MySQL and MariaDB.
Timestamp = (
    sa.DateTime(timezone=True)
    .with_variant(_SqliteTimestamp(), "sqlite")
    .with_variant(_MysqlTimestamp(), "mysql", "mariadb")
)
#: uuid on PostgreSQL; CHAR(32) hex elsewhere, MariaDB included (whose native UUID type orders ids differently
#: from their value), so that listings break ties by id in the same order on every database.
Id = sa.Uuid().with_variant(sa.Uuid(native_uuid=False), "mysql", "mariadb")
#: JSONB on PostgreSQL, JSON elsewhere (text on SQLite, LONGTEXT checked by JSON_VALID on MariaDB).
#: Python ``None`` is SQL NULL (not the JSON ``null``), so a log row without a response reads the
#: same whichever method wrote it.
Json = sa.JSON(none_as_null=True).with_variant(pg_dialect.JSONB(none_as_null=True), "postgresql")


def literal(value: str) -> sa.ColumnElement[str]:
    """A status (or action) as a SQL literal: a constant of the statement, not a parameter."""
    return sa.literal_column(f"'{value}'", sa.String())


saga_executions = sa.Table(
    "saga_executions",
    Base.metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("definition_version", sa.Integer(), nullable=False, server_default=sa.text("1")),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("context", Json, nullable=False),
    sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
    sa.Column("correlation_id", sa.String(255), nullable=True),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("lease_epoch", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("lease_expires_at", Timestamp, nullable=True),
    sa.Column("recovery_attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    # Trace propagation fields (W3C traceparent, ...) of the request that started the saga, so a
    # recovery run can link to it; written once, with the start.
    sa.Column("trace_context", Json, nullable=True),
)

_t = saga_executions
RESUMABLE_CLAUSE = _t.c.status.in_([literal(status.value) for status in sorted(RESUMABLE)])

# No index holds lease_expires_at or updated_at: checkpoints that keep the status are HOT updates.
sa.Index("ix_saga_executions_status_created", _t.c.status, _t.c.created_at)
sa.Index("ix_saga_executions_name_created", _t.c.name, _t.c.created_at)
sa.Index("ix_saga_executions_correlation_id", _t.c.correlation_id)

saga_log = sa.Table(
    "saga_log",
    Base.metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    # No foreign key: every log row is written by a statement or transaction that matched its saga's
    # row (see `checkpoint`), and on PostgreSQL the key's check (a query per row) cost about a tenth
    # of the throughput of a saga. `purge_sagas` deletes a saga's log rows with the saga.
    sa.Column("saga_id", Id, nullable=False),
    sa.Column("step_name", sa.String(255), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("details", sa.Text(), nullable=True),
    sa.Column("response", Json, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
)

_l = saga_log
sa.Index("ix_saga_log_saga_id_seq", _l.c.saga_id, _l.c.seq)

#: The schema version this code writes: 1 was the first release (a recovery index on (status,
#: lease_expires_at) and a foreign key from saga_log), 2 dropped both, 3 added trace_context.
SCHEMA_VERSION = 4

saga_schema = sa.Table(
    "cqrs_saga_schema",
    Base.metadata,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)

#: The saga tables of this module (`cqrs.saga.storage.sqlalchemy._layout.ALL_TABLES` adds the outbox's).
TABLES = [saga_executions, saga_log, saga_schema]

RECORD_COLUMNS = (
    _t.c.id,
    _t.c.name,
    _t.c.status,
    _t.c.context,
    _t.c.version,
    _t.c.definition_version,
    _t.c.correlation_id,
    _t.c.owner,
    _t.c.lease_epoch,
    _t.c.lease_expires_at,
    _t.c.recovery_attempts,
    _t.c.error,
    _t.c.created_at,
    _t.c.updated_at,
    _t.c.trace_context,
)
#: The columns a log row's ``INSERT ... SELECT`` fills (the checkpoint statements of PostgreSQL).
LOG_INSERT_COLUMNS = ["saga_id", "step_name", "action", "status", "details", "response", "created_at"]
LOG_COLUMNS = (
    _l.c.saga_id,
    _l.c.step_name,
    _l.c.action,
    _l.c.status,
    _l.c.created_at,
    _l.c.details,
    _l.c.response,
    _l.c.seq,
)


# -- the database clock --------------------------------------------------------------------------


def database_now(dialect: str) -> sa.ColumnElement[datetime.datetime]:
    """The database's own clock as a SQL expression of ``dialect`` (the storage never reads the host's).

    On SQLite it is the UTC text the storage writes (``strftime('%Y-%m-%d %H:%M:%f', 'now')``); on
    MySQL and MariaDB ``UTC_TIMESTAMP(6)``.
    """
    kind = family(dialect)
    if kind == "sqlite":
        return sa.func.strftime(sa.literal_column(f"'{_SQLITE_FORMAT}'"), sa.literal_column("'now'"), type_=Timestamp)
    if kind == "mysql":
        return sa.func.utc_timestamp(sa.literal_column("6"), type_=Timestamp)
    return sa.func.now(type_=Timestamp)


class Clock:
    """The database's own time, as SQL expressions of one dialect."""

    def __init__(self, dialect: str) -> None:
        self.family = family(dialect)
        self.now = database_now(dialect)

    def shifted(self, seconds: sa.ColumnElement[typing.Any]) -> sa.ColumnElement[datetime.datetime]:
        """Now plus ``seconds`` (a float parameter or expression; negative is the past)."""
        if self.family == "sqlite":
            return sa.func.strftime(
                sa.literal_column(f"'{_SQLITE_FORMAT}'"),
                sa.literal_column("'now'"),
                sa.func.printf(sa.literal_column("'%+.3f seconds'"), seconds),
                type_=Timestamp,
            )
        if self.family == "mysql":
            micros = sa.func.round(seconds * sa.literal_column("1000000"))
            return sa.func.timestampadd(sa.literal_column("MICROSECOND"), micros, self.now, type_=Timestamp)
        return sa.func.now(type_=Timestamp) + seconds * sa.literal_column("INTERVAL '1 second'", sa.Interval())


# -- rows to records -----------------------------------------------------------------------------


def _uuid(value: typing.Any) -> uuid.UUID:
    return value if type(value) is uuid.UUID else uuid.UUID(str(value))


def _aware(value: datetime.datetime | None) -> datetime.datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=_UTC)


def record(row: Row) -> SagaRecord:
    """A `SagaRecord` from a row of `RECORD_COLUMNS`."""
    (saga_id, name, status, context, version, definition_version, correlation_id, owner, lease_epoch,
     lease_expires_at, recovery_attempts, error, created_at, updated_at, trace_context) = row[:15]
    return SagaRecord(
        saga_id=_uuid(saga_id),
        name=name,
        status=SagaStatus(status),
        context=context,
        version=version,
        definition_version=definition_version,
        correlation_id=correlation_id,
        owner=owner,
        lease_epoch=lease_epoch,
        lease_expires_at=_aware(lease_expires_at),
        recovery_attempts=recovery_attempts,
        error=error,
        created_at=_aware(created_at),
        updated_at=_aware(updated_at),
        trace_context=trace_context,
    )


def log_entry(row: Row) -> SagaLogEntry:
    """A `SagaLogEntry` from a row of `LOG_COLUMNS`."""
    saga_id, step_name, action, status, created_at, details, response, seq = row
    return SagaLogEntry(
        saga_id=_uuid(saga_id),
        step_name=step_name,
        action=action,
        status=SagaStepStatus(status),
        timestamp=typing.cast(datetime.datetime, _aware(created_at)),
        details=details,
        response=response,
        seq=seq,
    )


def claims(records: list[SagaRecord], histories: typing.Iterable[SagaLogEntry], owner: str) -> list[SagaClaim]:
    """Granted claims of ``records`` (handed out oldest first), each with its entries of ``histories``."""
    by_saga: dict[uuid.UUID, list[SagaLogEntry]] = collections.defaultdict(list)
    for entry in histories:
        by_saga[entry.saga_id].append(entry)
    records.sort(key=lambda r: (r.created_at or _EARLIEST, r.saga_id.int))
    return [
        SagaClaim(record=r, history=by_saga.get(r.saga_id, []), lease=Lease(owner=owner, epoch=r.lease_epoch))
        for r in records
    ]
