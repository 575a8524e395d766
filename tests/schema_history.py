"""Earlier schemas of the saga tables, as this project's git history wrote them, and python-cqrs 4.15's tables.

- `FIRST`: the first release (bcad69a): a partial recovery index on (status,
  lease_expires_at) and a foreign key from saga_log (PostgreSQL and SQLite: the
  storage did not take MySQL then).
- `SECOND`: both dropped (5524b51, f8d5d7a); MySQL/MariaDB start here (8539e14).
- python-cqrs 4.15.1 (``cqrs.saga.storage.sqlalchemy``): ``saga_executions``
  and ``saga_logs``, status as an enum of member names, ``saga_logs.id`` a
  BigInteger identity.

Each builder takes a synchronous connection (``await conn.run_sync(build)``).
"""

from __future__ import annotations

import enum
import typing

import sqlalchemy as sa

from cqrs.saga.storage.sqlalchemy._schema import Id, Json, Timestamp, literal

_RESUMABLE = ["compensating", "compensation_failed", "pending", "running"]


def _executions(metadata: sa.MetaData, mysql: bool) -> sa.Table:
    return sa.Table(
        "saga_executions",
        metadata,
        sa.Column("id", Id if mysql else sa.Uuid(), primary_key=True),
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
    )


def _log(metadata: sa.MetaData, mysql: bool, foreign_key: bool) -> sa.Table:
    saga_id = (
        sa.Column("saga_id", sa.Uuid(), sa.ForeignKey("saga_executions.id", ondelete="CASCADE"), nullable=False)
        if foreign_key
        else sa.Column("saga_id", Id if mysql else sa.Uuid(), nullable=False)
    )
    table = sa.Table(
        "saga_log",
        metadata,
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        saga_id,
        sa.Column("step_name", sa.String(255), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("response", Json, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    sa.Index("ix_saga_log_saga_id_seq", table.c.saga_id, table.c.seq)
    return table


def _indexes(t: sa.Table, recovery: bool) -> None:
    if recovery:
        resumable = t.c.status.in_([literal(value) for value in _RESUMABLE])
        sa.Index(
            "ix_saga_executions_recovery", t.c.status, t.c.lease_expires_at,
            postgresql_where=resumable, sqlite_where=resumable,
        )
    sa.Index("ix_saga_executions_status_created", t.c.status, t.c.created_at)
    sa.Index("ix_saga_executions_name_created", t.c.name, t.c.created_at)
    sa.Index("ix_saga_executions_correlation_id", t.c.correlation_id)


def first_schema(conn: sa.Connection) -> None:
    """Schema 1 (the first release)."""
    metadata = sa.MetaData()
    _indexes(_executions(metadata, mysql=False), recovery=True)
    _log(metadata, mysql=False, foreign_key=True)
    metadata.create_all(conn)


def second_schema(conn: sa.Connection) -> None:
    """Schema 2 (no recovery index, no foreign key; the first on MySQL/MariaDB)."""
    mysql = conn.dialect.name in ("mysql", "mariadb")
    metadata = sa.MetaData()
    _indexes(_executions(metadata, mysql=mysql), recovery=False)
    _log(metadata, mysql=mysql, foreign_key=False)
    metadata.create_all(conn)


def old_tables(conn: sa.Connection) -> tuple[sa.Table, sa.Table]:
    """Table objects to insert rows into an earlier schema (the columns every version has)."""
    mysql = conn.dialect.name in ("mysql", "mariadb")
    metadata = sa.MetaData()
    return _executions(metadata, mysql), _log(metadata, mysql, foreign_key=False)


class _PyCqrsSagaStatus(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"


class _PyCqrsStepStatus(enum.Enum):
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"


def python_cqrs_tables(conn: sa.Connection) -> None:
    """python-cqrs 4.15.1's ``saga_executions`` and ``saga_logs``, column for column."""
    metadata = sa.MetaData()
    sa.Table(
        "saga_executions",
        metadata,
        sa.Column("id", sa.Uuid, primary_key=True, nullable=False, comment="Saga ID"),
        sa.Column("name", sa.String(255), nullable=False, comment="Saga Name"),
        sa.Column("status", sa.Enum(_PyCqrsSagaStatus, name="sagastatus"), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False, comment="Serialized context"),
        sa.Column("version", sa.Integer, nullable=False, default=1),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("recovery_attempts", sa.Integer, nullable=False, default=0, server_default=sa.text("0")),
    )
    sa.Table(
        "saga_logs",
        metadata,
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True, nullable=False, autoincrement=True),
        sa.Column("saga_id", sa.Uuid, sa.ForeignKey("saga_executions.id"), nullable=False),
        sa.Column("step_name", sa.String(255), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("status", sa.Enum(_PyCqrsStepStatus, name="sagastepstatus"), nullable=False),
        sa.Column("details", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    metadata.create_all(conn)


def snapshot(conn: sa.Connection) -> dict[str, typing.Any]:
    """Every table's name and row count (to show that nothing was written)."""
    inspector = sa.inspect(conn)
    return {
        name: conn.execute(sa.text(f"SELECT COUNT(*) FROM {name}")).scalar_one()
        for name in sorted(inspector.get_table_names())
    }
