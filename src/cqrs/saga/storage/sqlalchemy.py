"""The durable saga storage: SQLAlchemy Core on PostgreSQL (asyncpg) or SQLite (aiosqlite).

    pip install 'cqrs-saga[postgres]'   # or 'cqrs-saga[sqlite]'

    storage = SqlAlchemySagaStorage.from_url("postgresql+asyncpg://user@host/db")
    await storage.create_tables()       # or Alembic: target_metadata = Base.metadata

`SqlAlchemySagaStorage` also takes an ``async_sessionmaker`` (or an
``AsyncSession``, or an ``AsyncEngine``) and does its work on that session's
engine: SQLAlchemy Core statements on connections of its own from the
engine's pool, never the ORM unit of work, so the saga's writes commit on
their own, whatever the session is doing. The statements are built once per
storage and reused, so SQLAlchemy's compiled cache is hit without rebuilding
a statement per call.

On asyncpg, the single-statement writes (`start_saga`, `checkpoint`,
`renew_lease`, `release_lease` and the other writes that return only a row
count) skip SQLAlchemy's statement execution: each statement is compiled once
by SQLAlchemy from the tables below (the same SQL it would send) and run on
the pooled connection's asyncpg connection with positional parameters,
asyncpg preparing it once per connection. The connection comes from the
engine's pool and is lent to the storage's writes until the event loop's next
iteration, so back-to-back writes skip the pool's checkout and checkin; no
write starts on a connection checked out 0.1 s or more earlier. Driver
errors become the SQLAlchemy exceptions the SQLAlchemy path raises, with
the same effect on the pool (a lost connection is discarded).
While anything listens to the engine's statement events (tracing, ``echo``,
statement counters) every write goes through SQLAlchemy, so it sees them all.
Reads, claims and SQLite always go through SQLAlchemy.

Tables (in ``Base.metadata``) and the query each index serves:

``saga_executions``, one row per saga (primary key ``id``: `get_saga`,
`claim_saga`, and every conditional write ``WHERE id = :id AND owner = :owner
AND lease_epoch = :epoch``):

- ``ix_saga_executions_status_created (status, created_at)``: the recovery
  scans `claim_recoverable` and `get_sagas_for_recovery` (a range per
  unfinished status, so the finished sagas are never read), and
  ``list_sagas(status=...)``, oldest first, with ``older_than``. No index
  holds ``lease_expires_at`` or ``updated_at``, so a checkpoint that leaves
  the status alone is a HOT update on PostgreSQL (no index is written). The
  queries spell the statuses as literals, not parameters.
- ``ix_saga_executions_name_created (name, created_at)``:
  ``list_sagas(name=...)``, oldest first, with ``older_than``.
- ``ix_saga_executions_correlation_id (correlation_id)``:
  ``list_sagas(correlation_id=...)``.

``saga_log``, one row per step outcome; ``seq`` (an autoincrementing bigint)
is the order of history, timestamps never are:

- ``ix_saga_log_saga_id_seq (saga_id, seq)``: a saga's history in order
  (`claim_saga`, `get_step_history`, `reset_saga`) and `purge_sagas`.
  ``saga_id`` has no foreign key (see the column's comment); `purge_sagas`
  deletes a saga's log rows with it.

Time comes from the database (``now()`` on PostgreSQL, ``'now'`` on SQLite),
never from the host's clock, for lease expiries, "expired" tests and ages. On
PostgreSQL timestamps are ``timestamptz``. On SQLite they are stored as UTC
text ``YYYY-MM-DD HH:MM:SS.SSS`` (what ``strftime('%Y-%m-%d %H:%M:%f')``
writes): fixed width, so comparing the strings compares the instants, to the
millisecond. Every timestamp the API returns is a timezone-aware UTC datetime.

Round trips per engine write (after a pooled connection has prepared the
statement once; asyncpg keeps prepared statements per connection):

- PostgreSQL: every write is one statement on a connection outside any
  transaction (``AUTOCOMMIT``), so no ``BEGIN``/``COMMIT`` is sent: `start_saga` is one
  round trip (``INSERT ... ON CONFLICT DO NOTHING``), a `checkpoint` is one
  round trip (``WITH u AS (UPDATE ... RETURNING id) INSERT INTO saga_log ...
  SELECT ... FROM u``, or just the ``UPDATE`` without a log entry), and so are
  `renew_lease`, `release_lease` and `claim_recoverable`. `claim_saga` is two
  (the conditional ``UPDATE ... RETURNING`` and the history read), three when
  the lease is not granted.
- SQLite: `start_saga` is the ``INSERT`` and a ``COMMIT``; a `checkpoint` is
  ``UPDATE``, ``INSERT`` (only if the update matched) and ``COMMIT`` in one
  transaction (SQLite has no data-modifying CTEs). The ``BEGIN`` is issued by
  the sqlite3 module with the first write, in the same call.

SQLite concurrency: every write transaction starts with its write statement,
so it takes the database's write lock at once, and `claim_recoverable` is one
``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING``: two processes can
never both claim a saga, without ``BEGIN IMMEDIATE``. Engines made by
`from_url` set a busy timeout (30 s), WAL journal mode and foreign keys on
every connection; for an engine you make yourself, set a busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import typing
import uuid

try:
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql as pg_dialect
    from sqlalchemy.dialects import sqlite as sqlite_dialect
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.ext.asyncio import (
        AsyncConnection,
        AsyncEngine,
        AsyncSession,
        async_sessionmaker,
        create_async_engine,
    )
    from sqlalchemy.orm import DeclarativeBase
    from sqlalchemy.pool import QueuePool, StaticPool
    from sqlalchemy.util import greenlet_spawn

    try:
        from sqlalchemy.util import await_
    except ImportError:  # pragma: no cover - SQLAlchemy 2.0 spells it await_only
        from sqlalchemy.util import await_only as await_
except ImportError as _error:  # pragma: no cover - exercised by a test that hides sqlalchemy
    raise ImportError(
        "cqrs.saga.storage.sqlalchemy needs SQLAlchemy: pip install 'cqrs-saga[sqlalchemy]' "
        "(or 'cqrs-saga[postgres]' / 'cqrs-saga[sqlite]' for the database drivers too)"
    ) from _error

from cqrs.saga.exceptions import SagaNotFoundError
from cqrs.saga.storage.enums import RESUMABLE, SagaStatus, SagaStepStatus, purge_filter
from cqrs.saga.storage.models import Lease, NewSaga, SagaClaim, SagaLogEntry, SagaRecord, StepEntry

__all__ = ["Base", "SqlAlchemySagaStorage", "saga_executions", "saga_log"]

JsonDict = dict[str, typing.Any]
_Row = typing.Sequence[typing.Any]
_UTC = datetime.timezone.utc
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%f"  # SQLite's strftime: %f is SS.SSS
_PY_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # the same text from Python, cut to milliseconds
_DRIVER_EXTRAS = {"postgresql": "postgres", "sqlite": "sqlite"}


# -- schema ----------------------------------------------------------------------------------------


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


#: timestamptz on PostgreSQL, UTC text on SQLite.
Timestamp = sa.DateTime(timezone=True).with_variant(_SqliteTimestamp(), "sqlite")
#: JSONB on PostgreSQL, JSON (text) elsewhere. Python ``None`` is SQL NULL (not the JSON ``null``),
#: so a log row without a response reads the same whichever method wrote it.
Json = sa.JSON(none_as_null=True).with_variant(pg_dialect.JSONB(none_as_null=True), "postgresql")


def _literal(status: str) -> sa.ColumnElement[str]:
    """A status as a SQL literal (a constant of the statement, not a parameter)."""
    return sa.literal_column(f"'{status}'", sa.String())


_RESUMABLE_VALUES = sorted(status.value for status in RESUMABLE)

saga_executions = sa.Table(
    "saga_executions",
    Base.metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
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

_t = saga_executions
_RESUMABLE_CLAUSE = _t.c.status.in_([_literal(value) for value in _RESUMABLE_VALUES])

# No index holds lease_expires_at or updated_at: checkpoints that keep the status are HOT updates.
sa.Index("ix_saga_executions_status_created", _t.c.status, _t.c.created_at)
sa.Index("ix_saga_executions_name_created", _t.c.name, _t.c.created_at)
sa.Index("ix_saga_executions_correlation_id", _t.c.correlation_id)

saga_log = sa.Table(
    "saga_log",
    Base.metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    # No foreign key: every log row is written by a statement that matched its saga's row (see
    # `checkpoint`), and on PostgreSQL the key's check (a query per row) cost about a tenth of the
    # throughput of a saga. `purge_sagas` deletes a saga's log rows with the saga.
    sa.Column("saga_id", sa.Uuid(), nullable=False),
    sa.Column("step_name", sa.String(255), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("details", sa.Text(), nullable=True),
    sa.Column("response", Json, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
)

_l = saga_log
sa.Index("ix_saga_log_saga_id_seq", _l.c.saga_id, _l.c.seq)

_TABLES = [saga_executions, saga_log]

_RECORD_COLUMNS = (
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
)
_LOG_COLUMNS = (
    _l.c.saga_id,
    _l.c.step_name,
    _l.c.action,
    _l.c.status,
    _l.c.created_at,
    _l.c.details,
    _l.c.response,
    _l.c.seq,
)


def _uuid(value: typing.Any) -> uuid.UUID:
    return value if type(value) is uuid.UUID else uuid.UUID(str(value))


def _aware(value: datetime.datetime | None) -> datetime.datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=_UTC)


def _record(row: _Row) -> SagaRecord:
    (saga_id, name, status, context, version, definition_version, correlation_id, owner, lease_epoch,
     lease_expires_at, recovery_attempts, error, created_at, updated_at) = row
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
    )


def _log_entry(row: _Row) -> SagaLogEntry:
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


# -- statements ------------------------------------------------------------------------------------


def _bind(name: str, column: sa.Column[typing.Any]) -> sa.BindParameter[typing.Any]:
    """A parameter typed like ``column``; names start with ``b_`` so none is taken for a column."""
    return sa.bindparam(f"b_{name}", type_=column.type)


_LEASE_SECONDS = sa.bindparam("b_lease_seconds", type_=sa.Float())
# Constants of the statements, rendered into the SQL rather than sent as parameters.
_ZERO = sa.literal_column("0", sa.Integer())
_ONE = sa.literal_column("1", sa.Integer())
_NULL = sa.null()


def database_now(dialect: str) -> sa.ColumnElement[datetime.datetime]:
    """The database's own clock as a SQL expression of ``dialect`` (the storage never reads the host's).

    On SQLite it is the UTC text the storage writes (``strftime('%Y-%m-%d %H:%M:%f', 'now')``).
    """
    if dialect == "sqlite":
        return sa.func.strftime(sa.literal_column(f"'{_SQLITE_FORMAT}'"), sa.literal_column("'now'"), type_=Timestamp)
    return sa.func.now(type_=Timestamp)


class _Clock:
    """The database's own time, as SQL expressions of the dialect."""

    def __init__(self, dialect: str) -> None:
        self.sqlite = dialect == "sqlite"
        self.now = database_now(dialect)

    def shifted(self, seconds: sa.ColumnElement[typing.Any]) -> sa.ColumnElement[datetime.datetime]:
        """Now plus ``seconds`` (a float parameter or expression)."""
        if self.sqlite:
            return sa.func.strftime(
                sa.literal_column(f"'{_SQLITE_FORMAT}'"),
                sa.literal_column("'now'"),
                sa.func.printf(sa.literal_column("'%+.3f seconds'"), seconds),
                type_=Timestamp,
            )
        return sa.func.now(type_=Timestamp) + seconds * sa.literal_column("INTERVAL '1 second'", sa.Interval())


class _Statements:
    """Every statement the storage runs, built once per storage (the engine's dialect)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.postgres = dialect == "postgresql"
        clock = self.clock = _Clock(dialect)
        now = clock.now
        expiry = clock.shifted(_LEASE_SECONDS)
        t, lg = _t, _l
        saga_id = _bind("id", t.c.id)
        holds = sa.and_(t.c.id == saga_id, t.c.owner == _bind("owner", t.c.owner),
                        t.c.lease_epoch == _bind("epoch", t.c.lease_epoch))
        lease_free_or_expired = sa.or_(
            t.c.owner.is_(None), t.c.lease_expires_at.is_(None), t.c.lease_expires_at <= now
        )
        pending_to_running = sa.case(
            (t.c.status == _literal(SagaStatus.PENDING.value), _literal(SagaStatus.RUNNING.value)),
            else_=t.c.status,
        )
        # Insertion order breaks ties of equal timestamps (SQLite's are in milliseconds).
        self.tiebreak: sa.ColumnElement[typing.Any] = (
            sa.literal_column("saga_executions.rowid") if dialect == "sqlite" else t.c.id
        )
        self._cache: dict[tuple[typing.Hashable, ...], typing.Any] = {}
        self.now = now
        self.expiry = expiry
        self.holds = holds
        self.lease_free_or_expired = lease_free_or_expired
        self.pending_to_running = pending_to_running

        insert = pg_dialect.insert if self.postgres else sqlite_dialect.insert
        self.start = (
            insert(t)
            .values(
                id=saga_id,
                name=_bind("name", t.c.name),
                definition_version=_bind("definition_version", t.c.definition_version),
                status=_bind("status", t.c.status),
                context=_bind("context", t.c.context),
                version=_ONE,
                correlation_id=_bind("correlation_id", t.c.correlation_id),
                owner=_bind("owner", t.c.owner),
                lease_epoch=_ONE,
                lease_expires_at=expiry,
                recovery_attempts=_ZERO,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=[t.c.id])
        )
        self.create = sa.insert(t).values(
            id=saga_id,
            name=_bind("name", t.c.name),
            definition_version=_ONE,
            status=_literal(SagaStatus.PENDING.value),
            context=_bind("context", t.c.context),
            version=_ONE,
            correlation_id=_bind("correlation_id", t.c.correlation_id),
            lease_epoch=_ZERO,
            recovery_attempts=_ZERO,
            created_at=now,
            updated_at=now,
        )
        self.claim = (
            sa.update(t)
            .where(
                t.c.id == saga_id,
                _RESUMABLE_CLAUSE,
                sa.or_(lease_free_or_expired, t.c.owner == _bind("owner", t.c.owner)),
            )
            .values(
                owner=_bind("owner", t.c.owner),
                lease_epoch=t.c.lease_epoch + _ONE,
                lease_expires_at=expiry,
                status=pending_to_running,
                updated_at=now,
            )
            .returning(*_RECORD_COLUMNS)
        )
        self.get = sa.select(*_RECORD_COLUMNS).where(t.c.id == saga_id)
        self.history = sa.select(*_LOG_COLUMNS).where(lg.c.saga_id == saga_id).order_by(lg.c.seq)
        # One read that tells an unknown saga (no row) from an empty history (one row of NULLs).
        self.history_or_missing = (
            sa.select(t.c.id, *_LOG_COLUMNS[1:])
            .select_from(t.outerjoin(lg, lg.c.saga_id == t.c.id))
            .where(t.c.id == saga_id)
            .order_by(lg.c.seq)
        )
        self.renew = sa.update(t).where(holds).values(lease_expires_at=expiry, updated_at=now)
        self.release = sa.update(t).where(holds).values(owner=_NULL, lease_expires_at=_NULL, updated_at=now)
        self.log_entry_values = {
            "step_name": _bind("step_name", lg.c.step_name),
            "action": _bind("action", lg.c.action),
            "status": _bind("step_status", lg.c.status),
            "details": _bind("details", lg.c.details),
            "response": _bind("response", lg.c.response),
        }
        self.append = sa.insert(lg).values(saga_id=saga_id, created_at=now, **self.log_entry_values)
        # python-cqrs's log_step: appends only if the saga exists (rowcount 0 = unknown saga).
        self.log_step = sa.insert(lg).from_select(
            ["saga_id", "step_name", "action", "status", "details", "created_at"],
            sa.select(
                t.c.id,
                self.log_entry_values["step_name"],
                self.log_entry_values["action"],
                self.log_entry_values["status"],
                self.log_entry_values["details"],
                now,
            ).where(t.c.id == saga_id),
        )
        self.version_of = sa.select(t.c.version).where(t.c.id == saga_id)
        self.update_status = (
            sa.update(t)
            .where(t.c.id == saga_id)
            .values(status=_bind("status", t.c.status), version=t.c.version + _ONE, updated_at=now)
        )
        self.set_attempts = (
            sa.update(t)
            .where(t.c.id == saga_id)
            .values(recovery_attempts=_bind("attempts", t.c.recovery_attempts), updated_at=now)
        )
        self.park = (
            sa.update(t)
            .where(t.c.id == saga_id)
            .values(
                status=_literal(SagaStatus.PARKED.value),
                error=_bind("error", t.c.error),
                owner=_NULL,
                lease_expires_at=_NULL,
                updated_at=now,
            )
        )
        compensating = sa.exists().where(
            lg.c.saga_id == t.c.id,
            sa.or_(lg.c.action == _literal("compensate"), lg.c.status == _literal(SagaStepStatus.FAILED.value)),
        )
        self.reset = (
            sa.update(t)
            .where(t.c.id == saga_id)
            .values(
                status=sa.case(
                    (compensating, _literal(SagaStatus.COMPENSATING.value)),
                    else_=_literal(SagaStatus.RUNNING.value),
                ),
                recovery_attempts=_ZERO,
                owner=_NULL,
                lease_expires_at=_NULL,
                updated_at=now,
            )
        )

    def cached(self, key: tuple[typing.Hashable, ...], build: typing.Callable[[], typing.Any]) -> typing.Any:
        statement = self._cache.get(key)
        if statement is None:
            statement = self._cache[key] = build()
        return statement

    # -- statements with variants (built on first use, then reused) -----------------------------------

    def checkpoint_update(self, context: bool, status: bool, error: bool, release: bool) -> sa.Update:
        t = _t
        values: dict[str, typing.Any] = {"version": t.c.version + _ONE, "updated_at": self.now}
        if context:
            values["context"] = _bind("context", t.c.context)
        if status:
            values["status"] = _bind("status", t.c.status)
        if error:
            values["error"] = _bind("error", t.c.error)
        if release:
            values.update(owner=_NULL, lease_expires_at=_NULL)
        else:
            values["lease_expires_at"] = self.expiry
        return sa.update(t).where(self.holds).values(**values)

    def checkpoint(self, entry: bool, context: bool, status: bool, error: bool, release: bool) -> typing.Any:
        """The checkpoint statement: on PostgreSQL one statement even with a log entry."""

        def build() -> typing.Any:
            update = self.checkpoint_update(context, status, error, release)
            if not (entry and self.postgres):
                return update
            # WITH u AS (UPDATE ... RETURNING id) INSERT INTO saga_log (...) SELECT u.id, ... FROM u:
            # the log row exists only if the fenced update matched; rowcount says which.
            updated = update.returning(_t.c.id).cte("u")
            v = self.log_entry_values
            return sa.insert(_l).from_select(
                ["saga_id", "step_name", "action", "status", "details", "response", "created_at"],
                sa.select(
                    updated.c.id, v["step_name"], v["action"], v["status"], v["details"], v["response"], self.now
                ),
            )

        return self.cached(("checkpoint", entry, context, status, error, release), build)

    def purge(self, statuses: frozenset[SagaStatus]) -> tuple[typing.Any, ...]:
        """The statements that delete the oldest finished sagas and their log rows, in one transaction."""

        def build() -> tuple[typing.Any, ...]:
            t, lg = _t, _l
            doomed = (
                sa.select(t.c.id)
                .where(
                    t.c.status.in_([_literal(status.value) for status in sorted(statuses)]),
                    t.c.owner.is_(None),
                    t.c.created_at <= self.clock.shifted(-sa.bindparam("b_older", type_=sa.Float())),
                )
                .order_by(t.c.created_at, self.tiebreak)
                .limit(sa.bindparam("b_limit", type_=sa.Integer()))
            )
            if self.postgres:
                # One statement, one snapshot: the sagas picked (locked, skipping rows another
                # transaction holds) are the ones whose log rows go.
                picked = doomed.with_for_update(skip_locked=True).cte("doomed")
                logs = sa.delete(lg).where(lg.c.saga_id.in_(sa.select(picked.c.id))).cte("doomed_log")
                return (sa.delete(t).where(t.c.id.in_(sa.select(picked.c.id))).add_cte(logs),)
            # SQLite: the first DELETE takes the write lock, so the second one's subquery picks the same sagas.
            return sa.delete(lg).where(lg.c.saga_id.in_(doomed)), sa.delete(t).where(t.c.id.in_(doomed))

        return typing.cast("tuple[typing.Any, ...]", self.cached(("purge", statuses), build))

    def claim_recoverable(self, names: bool, max_attempts: bool) -> typing.Any:
        def build() -> typing.Any:
            t = _t
            conditions: list[sa.ColumnElement[bool]] = [_RESUMABLE_CLAUSE, self.lease_free_or_expired]
            if names:
                conditions.append(t.c.name.in_(sa.bindparam("b_names", expanding=True)))
            if max_attempts:
                conditions.append(t.c.recovery_attempts < _bind("max_attempts", t.c.recovery_attempts))
            candidates = (
                sa.select(t.c.id)
                .where(*conditions)
                # As memory.py: a free lease (NULL) counts as expiring now, so older expiries go first.
                .order_by(sa.func.coalesce(t.c.lease_expires_at, self.now), t.c.created_at, self.tiebreak)
                .limit(sa.bindparam("b_limit", type_=sa.Integer()))
            )
            values = {
                "owner": _bind("owner", t.c.owner),
                "lease_epoch": t.c.lease_epoch + _ONE,
                "lease_expires_at": self.expiry,
                "recovery_attempts": t.c.recovery_attempts + _ONE,
                "status": self.pending_to_running,
                "updated_at": self.now,
            }
            if self.postgres:
                # The row-locking CTE runs exactly once; rows another claimer has locked are skipped,
                # not waited for. (An IN (subquery ... LIMIT) may be rescanned by some plans.)
                claimed = candidates.with_for_update(skip_locked=True).cte("claimed")
                return sa.update(t).where(t.c.id == claimed.c.id).values(**values).returning(*_RECORD_COLUMNS)
            # SQLite: one statement holds the single write lock from its start to its end.
            return sa.update(t).where(t.c.id.in_(candidates)).values(**values).returning(*_RECORD_COLUMNS)

        return self.cached(("claim_recoverable", names, max_attempts), build)

    def update_context(self, check_version: bool) -> sa.Update:
        def build() -> sa.Update:
            t = _t
            statement = (
                sa.update(t)
                .where(t.c.id == _bind("id", t.c.id))
                .values(context=_bind("context", t.c.context), version=t.c.version + _ONE, updated_at=self.now)
            )
            if check_version:
                statement = statement.where(t.c.version == _bind("expected_version", t.c.version))
            return statement

        return typing.cast(sa.Update, self.cached(("update_context", check_version), build))

    def increment_attempts(self, new_status: bool) -> sa.Update:
        def build() -> sa.Update:
            t = _t
            values: dict[str, typing.Any] = {"recovery_attempts": t.c.recovery_attempts + _ONE, "updated_at": self.now}
            if new_status:
                values["status"] = _bind("status", t.c.status)
            return sa.update(t).where(t.c.id == _bind("id", t.c.id)).values(**values)

        return typing.cast(sa.Update, self.cached(("increment_attempts", new_status), build))

    def for_recovery(self, name: bool, stale: bool) -> sa.Select[typing.Any]:
        def build() -> sa.Select[typing.Any]:
            t = _t
            conditions: list[sa.ColumnElement[bool]] = [
                _RESUMABLE_CLAUSE,
                self.lease_free_or_expired,
                t.c.recovery_attempts < _bind("max_attempts", t.c.recovery_attempts),
            ]
            if name:
                conditions.append(t.c.name == _bind("name", t.c.name))
            if stale:
                conditions.append(t.c.updated_at < self.clock.shifted(-sa.bindparam("b_stale", type_=sa.Float())))
            return (
                sa.select(t.c.id)
                .where(*conditions)
                .order_by(t.c.updated_at, self.tiebreak)
                .limit(sa.bindparam("b_limit", type_=sa.Integer()))
            )

        return typing.cast("sa.Select[typing.Any]", self.cached(("for_recovery", name, stale), build))

    def list_sagas(self, status: bool, name: bool, older: bool, correlation: bool) -> sa.Select[typing.Any]:
        def build() -> sa.Select[typing.Any]:
            t = _t
            conditions: list[sa.ColumnElement[bool]] = []
            if status:
                conditions.append(t.c.status == _bind("status", t.c.status))
            if name:
                conditions.append(t.c.name == _bind("name", t.c.name))
            if older:
                conditions.append(t.c.created_at <= self.clock.shifted(-sa.bindparam("b_older", type_=sa.Float())))
            if correlation:
                conditions.append(t.c.correlation_id == _bind("correlation_id", t.c.correlation_id))
            return (
                sa.select(*_RECORD_COLUMNS)
                .where(*conditions)
                .order_by(t.c.created_at, self.tiebreak)
                .limit(sa.bindparam("b_limit", type_=sa.Integer()))
            )

        return typing.cast(
            "sa.Select[typing.Any]", self.cached(("list_sagas", status, name, older, correlation), build)
        )


# -- the asyncpg write path ----------------------------------------------------------------------

#: JSON parameters as compact text (what SQLAlchemy's JSONB type would send, without the spaces).
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


class _Prepared:
    """A write statement compiled once for the asyncpg dialect, to run on the driver connection itself.

    The SQL text is SQLAlchemy's own compilation of the statement (``$1::UUID``, ...), so the
    schema stays defined once, by the tables above; ``names`` are its parameters in ``$n`` order,
    and ``converters`` the bind processing the dialect would apply to some of them (JSON to text).
    """

    __slots__ = ("converters", "names", "sql")

    def __init__(self, sql: str, names: tuple[str, ...],
                 converters: tuple[tuple[int, typing.Callable[[typing.Any], typing.Any]], ...]) -> None:
        self.sql = sql
        self.names = names
        self.converters = converters

    @classmethod
    def compile(cls, statement: typing.Any, dialect: sa.Dialect) -> _Prepared | None:
        """``None`` if the statement needs more than fixed SQL text (expanding or literal parameters)."""
        compiled = statement.compile(dialect=dialect)
        if compiled.post_compile_params or compiled.literal_execute_params:
            return None
        names = tuple(compiled.positiontup or ())
        processors: typing.Mapping[str, typing.Any] = compiled._bind_processors
        serializer = getattr(dialect, "_json_serializer", None) or _COMPACT_JSON.encode

        def to_json(value: typing.Any) -> str | None:
            # Our JSON columns are none_as_null: Python None is SQL NULL.
            return None if value is None else typing.cast(str, serializer(value))

        converters: list[tuple[int, typing.Callable[[typing.Any], typing.Any]]] = []
        for position, name in enumerate(names):
            if isinstance(compiled.binds[name].type, sa.JSON):
                converters.append((position, to_json))
            elif processors.get(name) is not None:
                converters.append((position, processors[name]))
        return cls(compiled.string, names, tuple(converters))

    def arguments(self, params: typing.Mapping[str, typing.Any]) -> list[typing.Any]:
        args = [params[name] for name in self.names]
        for position, convert in self.converters:
            args[position] = convert(args[position])
        return args


#: How long after its checkout a lent connection may still start a write, however busy the
#: storage; the next write returns it to the pool (where pre-ping, recycling and invalidation
#: apply on its next checkout) and checks one out again. That costs one checkout per 0.1 s. It
#: does not make the pool fair: a waiting checkout may still lose the connection to the writer.
_LEND_SECONDS = 0.1
#: A lent connection: the pool's connection (a ``_ConnectionFairy``), its pool, when it is due back.
_Lent = tuple[typing.Any, typing.Any, float]


class _Lender:
    """The connections lent to a storage's asyncpg write path, on one event loop."""

    __slots__ = ("idle", "loop", "retired", "scheduled", "tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.idle: list[_Lent] = []  # free for the next write, until the loop's next iteration
        self.retired: list[_Lent] = []  # to go back to the pool with the idle ones
        self.scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()

    def schedule(self, give_back: typing.Callable[[_Lender], None]) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(give_back, self)


def _asyncpg_path_supported(engine: sa.Engine) -> bool:
    """Whether this SQLAlchemy has the internals the asyncpg write path leans on.

    They are private (event flags, bind processors, the DBAPI error translation), so a release
    that renames one turns the path off and every write goes through SQLAlchemy as before.
    """
    compiled = sa.select(sa.literal(1)).compile(dialect=engine.dialect)
    return (
        hasattr(engine, "_has_events")
        and hasattr(sa.Connection, "_has_events")
        and hasattr(engine, "_should_log_info")
        and hasattr(sa.Connection, "_handle_dbapi_exception")
        and hasattr(sa.Connection, "_handle_dbapi_exception_noconnection")
        and hasattr(compiled, "_bind_processors")
        and hasattr(compiled, "positiontup")
        and hasattr(engine.dialect, "dispatch")
    )


def _rowcount(status: str) -> int:
    """Rows a statement wrote, from its command tag (``UPDATE 1``, ``INSERT 0 1``)."""
    return int(status.rpartition(" ")[2] or 0)


# -- engines -----------------------------------------------------------------------------------------


def _create_engine(url: str | sa.URL, **engine_kwargs: typing.Any) -> AsyncEngine:
    """An async engine for ``url``, set up for sagas (SQLite: busy timeout, WAL, in-memory pool)."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        in_memory = parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
        if in_memory and "poolclass" not in engine_kwargs:
            # One connection, or each checkout would see its own empty database.
            engine_kwargs["poolclass"] = StaticPool
            for option in ("pool_size", "max_overflow", "pool_timeout"):
                engine_kwargs.pop(option, None)
        connect_args = dict(engine_kwargs.pop("connect_args", {}))
        connect_args.setdefault("timeout", 30.0)  # sqlite3's busy timeout, seconds
        engine_kwargs["connect_args"] = connect_args
        # Every storage call ends its transaction itself (commit, or rollback on error), so the
        # pool's extra ROLLBACK on check-in (one more aiosqlite thread hop per call) is skipped.
        engine_kwargs.setdefault("pool_reset_on_return", None)
    try:
        engine = create_async_engine(parsed, **engine_kwargs)
    except ImportError as error:
        extra = _DRIVER_EXTRAS.get(backend)
        install = f"pip install 'cqrs-saga[{extra}]'" if extra else f"install the {parsed.get_driver_name()} driver"
        raise ImportError(
            f"The database driver for {parsed.drivername!r} is not installed: {install}"
        ) from error
    if backend == "sqlite":
        file_database = not (parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory")
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas(file_database))
    return engine


def _sqlite_pragmas(file_database: bool) -> typing.Callable[[typing.Any, typing.Any], None]:
    def on_connect(dbapi_connection: typing.Any, connection_record: typing.Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            if file_database:
                # WAL: readers do not block the writer. Persistent, so usually already set.
                with contextlib.suppress(Exception):
                    cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    return on_connect


class _LoopLock:
    """An asyncio.Lock for the running event loop (a new one if the loop changed)."""

    __slots__ = ("_lock", "_loop")

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock


SessionOrFactory = typing.Union["async_sessionmaker[AsyncSession]", AsyncSession, AsyncEngine]
_T = typing.TypeVar("_T")


def _engine_of(source: SessionOrFactory) -> AsyncEngine:
    if isinstance(source, AsyncEngine):
        return source
    bind = source.bind if isinstance(source, AsyncSession) else source.kw.get("bind")
    if isinstance(bind, AsyncConnection):
        return bind.engine
    if isinstance(bind, AsyncEngine):
        return bind
    raise TypeError(
        "SqlAlchemySagaStorage needs an async_sessionmaker (or AsyncSession) bound to an AsyncEngine, "
        f"got one bound to {bind!r}"
    )


# -- the storage -----------------------------------------------------------------------------------------


class SqlAlchemySagaStorage:
    """Sagas in ``saga_executions`` and ``saga_log``, through SQLAlchemy Core.

    ``SqlAlchemySagaStorage(async_sessionmaker(engine))`` (preferred), or an
    ``AsyncSession`` (its engine is used; the storage never adds to the
    session's own transaction, so committing that session is harmless), or
    an ``AsyncEngine``. `from_url` makes the engine itself, and `close`
    disposes only an engine the storage made.

    Each call runs its statements on a connection of its own from the
    engine's pool (``engine.begin()`` / ``engine.connect()`` of the engine's
    ``sync_engine``, inside one greenlet per call: what ``AsyncConnection``
    does, but with one greenlet switch per call instead of three). On
    asyncpg the writes run on the driver connection itself, on a connection
    lent from the pool (see the module doc and `_execute_asyncpg`).
    """

    def __init__(self, session_or_factory: SessionOrFactory) -> None:
        self._source = session_or_factory
        self._session: AsyncSession | None = (
            session_or_factory if isinstance(session_or_factory, AsyncSession) else None
        )
        self._made_session = False
        self._owns_engine = False
        self.engine: AsyncEngine = _engine_of(session_or_factory)
        dialect = self.engine.dialect.name
        if dialect not in ("postgresql", "sqlite"):
            raise ValueError(f"SqlAlchemySagaStorage supports PostgreSQL and SQLite, not {dialect}")
        self._postgres = dialect == "postgresql"
        # PostgreSQL: every call is single statements on an AUTOCOMMIT connection of the same pool,
        # so a write is one round trip, not BEGIN / statement / COMMIT (asyncpg then sends no BEGIN;
        # each statement commits on its own). SQLite: a transaction per call, see the module doc.
        self._sync: sa.Engine = (
            self.engine.sync_engine.execution_options(isolation_level="AUTOCOMMIT")
            if self._postgres
            else self.engine.sync_engine
        )
        self._sql = _Statements(dialect)
        # PostgreSQL through asyncpg: writes run SQLAlchemy's SQL on the pooled asyncpg connection
        # itself (see `_write`). Not with a schema_translate_map: the SQL is compiled without one.
        self._asyncpg = (
            self._postgres
            and self.engine.dialect.driver == "asyncpg"
            and not self.engine.get_execution_options().get("schema_translate_map")
            and _asyncpg_path_supported(self.engine.sync_engine)
        )
        # By id() of the statement: `_Statements` builds each once and keeps it as long as the storage.
        self._prepared: dict[int, _Prepared | None] = {}
        self._lender: _Lender | None = None
        # SQLite has one writer at a time: writers of this process queue here rather than in
        # SQLite's busy handler, which sleeps and retries. A single-connection pool (in-memory
        # SQLite) is shared by every checkout, so there reads queue as well.
        single_connection = isinstance(self.engine.sync_engine.pool, StaticPool)
        self._write_lock = None if self._postgres else _LoopLock()
        self._read_lock = self._write_lock if single_connection else None

    @classmethod
    def from_url(cls, url: str | sa.URL, **engine_kwargs: typing.Any) -> SqlAlchemySagaStorage:
        """A storage on a new engine for ``url`` (``postgresql+asyncpg://...``, ``sqlite+aiosqlite:///...``).

        ``engine_kwargs`` go to ``create_async_engine`` (``pool_size``, ``echo``, ...).
        """
        engine = _create_engine(url, **engine_kwargs)
        storage = cls(async_sessionmaker(engine, expire_on_commit=False))
        storage._owns_engine = True
        return storage

    @property
    def session(self) -> AsyncSession:
        """The session given, or one made (once) from the factory given; the storage does not use it."""
        if self._session is None:
            if isinstance(self._source, async_sessionmaker):
                self._session = self._source()
            else:
                self._session = AsyncSession(self.engine, expire_on_commit=False)
            self._made_session = True
        return self._session

    async def create_tables(self) -> None:
        """Create the saga tables and indexes that do not exist yet (``Base.metadata.create_all``)."""
        await self._call_write(self._create_tables)

    def _create_tables(self) -> None:
        with self.engine.sync_engine.begin() as conn:
            # Several processes may start at once: one creates the tables, the others wait and find them.
            if self._postgres:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x5A6A_7AB1E5)))
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            Base.metadata.create_all(conn, tables=_TABLES)

    async def close(self) -> None:
        """Close the session the storage made and dispose the engine if `from_url` made it."""
        await self._return_all_lent()
        if self._made_session and self._session is not None:
            session, self._session, self._made_session = self._session, None, False
            await session.close()
        if self._owns_engine:
            await self.engine.dispose()

    async def __aenter__(self) -> SqlAlchemySagaStorage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- running statements ------------------------------------------------------------------------------
    # The ``_..._now`` methods are synchronous SQLAlchemy code, run by `_call` in a greenlet.

    async def _call(self, fn: typing.Callable[..., _T], *args: typing.Any) -> _T:
        """Run a read in a greenlet."""
        if self._lender is not None:
            self._give_back_idle(self._lender)
        if self._read_lock is None:
            return await greenlet_spawn(fn, *args)
        async with self._read_lock.get():
            return await greenlet_spawn(fn, *args)

    async def _call_write(self, fn: typing.Callable[..., _T], *args: typing.Any) -> _T:
        """Run a write in a greenlet (on SQLite, one at a time in this process)."""
        if self._lender is not None:
            self._give_back_idle(self._lender)
        if self._write_lock is None:
            return await greenlet_spawn(fn, *args)
        async with self._write_lock.get():
            return await greenlet_spawn(fn, *args)

    def _write_now(self, statement: typing.Any, params: typing.Mapping[str, typing.Any]) -> int:
        """One write statement, committed; returns its rowcount."""
        with self._sync.begin() as conn:
            return conn.execute(statement, params).rowcount

    def _write_returning_now(
        self, statement: typing.Any, params: typing.Mapping[str, typing.Any]
    ) -> typing.Sequence[_Row]:
        with self._sync.begin() as conn:
            return conn.execute(statement, params).all()

    def _read_now(self, statement: typing.Any, params: typing.Mapping[str, typing.Any]) -> typing.Sequence[_Row]:
        with self._sync.connect() as conn:
            return conn.execute(statement, params).all()

    async def _write(self, statement: typing.Any, params: typing.Mapping[str, typing.Any]) -> int:
        """One write statement, committed; returns its rowcount."""
        prepared = self._prepared_for(statement) if self._asyncpg else None
        if prepared is None:
            return await self._call_write(self._write_now, statement, params)
        try:
            args = prepared.arguments(params)
        except Exception as error:  # a value the JSON encoder refuses: what SQLAlchemy raises for it
            dialect = self.engine.dialect
            raise sa.exc.DBAPIError.instance(
                prepared.sql, params, error, dialect.loaded_dbapi.Error,
                hide_parameters=self.engine.sync_engine.hide_parameters, dialect=dialect,
            ) from error
        return _rowcount(await self._execute_asyncpg(prepared.sql, args))

    # -- the asyncpg write path --------------------------------------------------------------------------
    # A write through SQLAlchemy's Connection costs several times the client CPU of the statement
    # itself (execution context, compiled-cache lookup, cursor and result objects, events, greenlet
    # switches, pool checkout and checkin). On asyncpg, `_write` instead runs the statement's SQL,
    # compiled once by SQLAlchemy from the tables, on a pooled connection's asyncpg connection with
    # positional parameters (asyncpg prepares it once per connection and reuses it). No transaction
    # is begun: the statement commits on its own, as on the AUTOCOMMIT connections of the SQLAlchemy
    # path (a connection comes back to the pool with its transaction ended, so none is open on
    # checkout). Errors become the same SQLAlchemy exceptions, with the same effect on the
    # connection and the pool (`_raise_now`).
    #
    # Connections come from the engine's own pool (its size, overflow, pre-ping, recycling, connect
    # events and dispose apply), checked out in a greenlet. From a QueuePool (the default) a
    # connection is lent to the storage rather than checked in after each statement: it is kept
    # for the storage's next write until the event loop's next iteration, when the idle ones go
    # back (`_Lender`), and for at most `_LEND_SECONDS` in all. So back-to-back writes (a saga's
    # steps, many sagas at once) skip the checkout and checkin, and the pool gets every connection
    # back as soon as the storage stops writing.
    #
    # With anything listening to the engine's statements (tracing, ``echo``, statement counters)
    # each write goes through SQLAlchemy instead, so they see every statement as before.

    def _prepared_for(self, statement: typing.Any) -> _Prepared | None:
        engine = self.engine.sync_engine
        if (
            engine._has_events
            or sa.Connection._has_events
            or typing.cast(typing.Any, engine.dialect).dispatch.do_execute
            or engine._should_log_info()
        ):
            return None
        key = id(statement)
        if key not in self._prepared:
            self._prepared[key] = _Prepared.compile(statement, engine.dialect)
        return self._prepared[key]

    async def _execute_asyncpg(self, sql: str, args: list[typing.Any]) -> str:
        """``sql`` on a pooled connection's asyncpg connection; returns the command tag."""
        engine = self.engine.sync_engine
        pool = engine.pool
        if not isinstance(pool, QueuePool):
            return await greenlet_spawn(self._execute_asyncpg_now, engine, sql, args)
        loop = asyncio.get_running_loop()
        lender = self._lender
        if lender is None or lender.loop is not loop:
            lender = self._lender = _Lender(loop)
        idle = lender.idle
        now = loop.time()
        fairy: typing.Any = None
        while idle:
            entry = idle.pop()
            if entry[1] is pool and entry[2] > now:
                fairy, until = entry[0], entry[2]
                break
            lender.retired.append(entry)  # lent for long enough, or its pool was disposed
        if fairy is None:
            if lender.retired:
                # Back to the pool first, so the checkout takes one of them rather than a new connection.
                self._return_lent(lender)
            fairy = await greenlet_spawn(self._checkout_now, engine)
            until = now + _LEND_SECONDS
        try:
            status = await fairy.driver_connection.execute(sql, *args)
        except BaseException as error:
            # Back to the pool with the idle ones too: after a lost connection, the pool tells
            # (on checkout) which of its connections are older than the loss.
            lender.retired += idle
            idle.clear()
            lender.schedule(self._return_lent)
            await greenlet_spawn(self._raise_now, engine, fairy, error, sql, args)
            raise  # not reached: _raise_now raises
        idle.append((fairy, pool, until))
        lender.schedule(self._return_lent)
        return typing.cast(str, status)

    def _give_back_idle(self, lender: _Lender) -> None:
        """Before a call through SQLAlchemy: the connection lent to this storage goes back to the pool
        now, so that call takes it (or another idle one) rather than opening a second connection."""
        if (lender.idle or lender.retired) and lender.loop is asyncio.get_running_loop():
            self._return_lent(lender)

    def _return_lent(self, lender: _Lender) -> None:
        """A loop callback: give the pool back the connections lent but idle now (and the retired)."""
        lender.scheduled = False
        returning = lender.idle + lender.retired
        lender.idle.clear()
        lender.retired.clear()
        later = []
        current = self.engine.sync_engine.pool
        for entry in returning:
            fairy, pool = entry[0], entry[1]
            # A checkin awaits only when the pool closes the connection (an overflow connection
            # coming back to a full pool, or a disposed pool's): that is done in a greenlet.
            if (
                pool is current
                and isinstance(current, QueuePool)
                and (current.size() == 0 or current.checkedin() < current.size())
            ):
                with contextlib.suppress(Exception):  # (SQLAlchemy logs what fails in a checkin)
                    fairy.close()
            else:
                later.append(entry)
        if later:
            task = lender.loop.create_task(greenlet_spawn(self._check_in_now, later))
            lender.tasks.add(task)
            task.add_done_callback(lender.tasks.discard)

    def _check_in_now(self, entries: list[_Lent]) -> None:
        """In a greenlet: give connections back to their pool, or close them if it was disposed."""
        for fairy, pool, _ in entries:
            with contextlib.suppress(Exception):
                if pool is self.engine.sync_engine.pool:
                    fairy.close()
                else:
                    fairy.invalidate()

    async def _return_all_lent(self) -> None:
        lender, self._lender = self._lender, None
        if lender is None:
            return
        entries = lender.idle + lender.retired
        lender.idle.clear()
        lender.retired.clear()
        if entries:
            await greenlet_spawn(self._check_in_now, entries)
        if lender.tasks and lender.loop is asyncio.get_running_loop():
            await asyncio.gather(*lender.tasks, return_exceptions=True)

    @staticmethod
    def _checkout_now(engine: sa.Engine) -> typing.Any:
        """In a greenlet (the pool may connect, wait for a connection or pre-ping): one connection."""
        try:
            return engine.raw_connection()
        except engine.dialect.loaded_dbapi.Error as error:
            sa.Connection._handle_dbapi_exception_noconnection(error, engine.dialect, engine)

    def _execute_asyncpg_now(self, engine: sa.Engine, sql: str, args: list[typing.Any]) -> str:
        """In a greenlet, for pools other than a QueuePool: checkout, ``sql``, checkin."""
        fairy = self._checkout_now(engine)
        try:
            status = await_(fairy.driver_connection.execute(sql, *args))
        except BaseException as error:
            self._raise_now(engine, fairy, error, sql, args)
        fairy.close()
        return typing.cast(str, status)

    @staticmethod
    def _raise_now(
        engine: sa.Engine, fairy: typing.Any, error: BaseException, sql: str, args: list[typing.Any]
    ) -> typing.NoReturn:
        """In a greenlet: raise what SQLAlchemy raises for ``error``, do to the connection what it does.

        The asyncpg error becomes the dialect's DBAPI error (as SQLAlchemy's asyncpg cursor does),
        then SQLAlchemy's own (``IntegrityError``, ``DBAPIError`` with ``connection_invalidated``, ...)
        through ``Connection._handle_dbapi_exception``, which runs ``handle_error`` listeners. A
        lost connection is invalidated, i.e. closed and never handed out again, and so are the
        pool's other connections of that age; a cancellation invalidates the connection (a
        statement may be in flight); after any other error the connection goes back to the pool.
        """
        conn = sa.Connection(engine, connection=fairy)
        try:
            try:
                if isinstance(error, Exception):
                    fairy.dbapi_connection._handle_exception(error)  # raises the DBAPI error for it
                raise error
            except BaseException as raised:  # handled here: SQLAlchemy reads sys.exc_info()
                is_dbapi = isinstance(raised, engine.dialect.loaded_dbapi.Error)
                conn._handle_dbapi_exception(
                    raised, sql if is_dbapi else None, tuple(args) if is_dbapi else None, None, None
                )
        finally:
            conn.close()

    async def _read(self, statement: typing.Any, params: typing.Mapping[str, typing.Any]) -> typing.Sequence[_Row]:
        return await self._call(self._read_now, statement, params)

    # -- engine ------------------------------------------------------------------------------------------

    async def start_saga(self, saga: NewSaga, owner: str, lease_seconds: float) -> Lease | None:
        # One INSERT ... ON CONFLICT (id) DO NOTHING; its rowcount tells whether the id was free.
        inserted = await self._write(
            self._sql.start,
            {
                "b_id": saga.saga_id,
                "b_name": saga.name,
                "b_definition_version": saga.definition_version,
                "b_status": SagaStatus(saga.status).value,
                "b_context": saga.context,
                "b_correlation_id": saga.correlation_id,
                "b_owner": owner,
                "b_lease_seconds": lease_seconds,
            },
        )
        return Lease(owner=owner, epoch=1) if inserted == 1 else None

    async def claim_saga(self, saga_id: uuid.UUID, owner: str, lease_seconds: float) -> SagaClaim | None:
        return await self._call_write(
            self._claim_now, {"b_id": saga_id, "b_owner": owner, "b_lease_seconds": lease_seconds}
        )

    def _claim_now(self, params: dict[str, typing.Any]) -> SagaClaim | None:
        sql = self._sql
        # On SQLite the UPDATE comes first, so the transaction holds the write lock from its start.
        with self._sync.begin() as conn:
            row = conn.execute(sql.claim, params).first()
            lease: Lease | None = None
            busy = False
            if row is not None:
                record = _record(row)
                lease = Lease(owner=params["b_owner"], epoch=record.lease_epoch)
            else:
                row = conn.execute(sql.get, params).first()
                if row is None:
                    return None
                record = _record(row)
                # Resumable but not granted: another runner's lease has not expired.
                busy = record.status in RESUMABLE
            history = [_log_entry(r) for r in conn.execute(sql.history, params)]
        return SagaClaim(record=record, history=history, lease=lease, busy=busy)

    async def checkpoint(
        self,
        saga_id: uuid.UUID,
        lease: Lease,
        *,
        entry: StepEntry | None,
        context: JsonDict | None = None,
        status: SagaStatus | None = None,
        error: str | None = None,
        lease_seconds: float,
        release: bool = False,
    ) -> bool:
        # Round trips (statements, once a pooled connection has prepared them):
        #   PostgreSQL: 1. One autocommitted statement: WITH u AS (UPDATE saga_executions ... WHERE
        #     id, owner, lease_epoch RETURNING id) INSERT INTO saga_log ... SELECT ... FROM u (or the
        #     bare UPDATE without an entry); the log row exists only if the fenced update matched.
        #   SQLite: 3 driver calls in one transaction: UPDATE (the sqlite3 module sends BEGIN with
        #     it), INSERT only if the UPDATE matched, COMMIT.
        params: dict[str, typing.Any] = {"b_id": saga_id, "b_owner": lease.owner, "b_epoch": lease.epoch}
        if not release:
            params["b_lease_seconds"] = lease_seconds
        if context is not None:
            params["b_context"] = context
        if status is not None:
            params["b_status"] = SagaStatus(status).value
        if error is not None:
            params["b_error"] = error
        sql = self._sql
        if self._postgres:
            if entry is not None:
                params["b_step_name"] = entry.step_name
                params["b_action"] = entry.action
                params["b_step_status"] = SagaStepStatus(entry.status).value
                params["b_details"] = entry.details
                params["b_response"] = entry.response
            statement = sql.checkpoint(
                entry is not None, context is not None, status is not None, error is not None, release
            )
            return await self._write(statement, params) == 1
        update = sql.checkpoint(False, context is not None, status is not None, error is not None, release)
        log_params = None
        if entry is not None:
            log_params = {
                "b_id": saga_id,
                "b_step_name": entry.step_name,
                "b_action": entry.action,
                "b_step_status": SagaStepStatus(entry.status).value,
                "b_details": entry.details,
                "b_response": entry.response,
            }
        return await self._call_write(self._checkpoint_sqlite_now, update, params, log_params)

    def _checkpoint_sqlite_now(
        self, update: typing.Any, params: dict[str, typing.Any], log_params: dict[str, typing.Any] | None
    ) -> bool:
        with self._sync.begin() as conn:
            if conn.execute(update, params).rowcount != 1:
                return False
            if log_params is not None:
                conn.execute(self._sql.append, log_params)
        return True

    async def renew_lease(self, saga_id: uuid.UUID, lease: Lease, lease_seconds: float) -> bool:
        params = {"b_id": saga_id, "b_owner": lease.owner, "b_epoch": lease.epoch, "b_lease_seconds": lease_seconds}
        return await self._write(self._sql.renew, params) == 1

    async def release_lease(self, saga_id: uuid.UUID, lease: Lease) -> bool:
        params = {"b_id": saga_id, "b_owner": lease.owner, "b_epoch": lease.epoch}
        return await self._write(self._sql.release, params) == 1

    async def claim_recoverable(
        self,
        owner: str,
        lease_seconds: float,
        *,
        limit: int,
        names: typing.Collection[str] | None = None,
        max_attempts: int | None = None,
    ) -> list[SagaRecord]:
        if limit <= 0:
            return []
        params: dict[str, typing.Any] = {"b_owner": owner, "b_lease_seconds": lease_seconds, "b_limit": limit}
        if names is not None:
            params["b_names"] = list(names)
        if max_attempts is not None:
            params["b_max_attempts"] = max_attempts
        statement = self._sql.claim_recoverable(names is not None, max_attempts is not None)
        rows = await self._call_write(self._write_returning_now, statement, params)
        records = [_record(row) for row in rows]
        # RETURNING has no order: hand them out oldest first.
        records.sort(key=lambda r: r.created_at or datetime.datetime.min.replace(tzinfo=_UTC))
        return records

    # -- python-cqrs-shaped API --------------------------------------------------------------------------

    async def create_saga(
        self, saga_id: uuid.UUID, name: str, context: JsonDict, *, correlation_id: str | None = None
    ) -> None:
        params = {"b_id": saga_id, "b_name": name, "b_context": context, "b_correlation_id": correlation_id}
        try:
            await self._write(self._sql.create, params)
        except IntegrityError as error:
            raise ValueError(f"A saga with id {saga_id} is already stored") from error

    async def update_context(
        self, saga_id: uuid.UUID, context: JsonDict, current_version: int | None = None
    ) -> None:
        params: dict[str, typing.Any] = {"b_id": saga_id, "b_context": context}
        if current_version is not None:
            params["b_expected_version"] = current_version
        if await self._write(self._sql.update_context(current_version is not None), params) == 1:
            return
        rows = await self._read(self._sql.version_of, {"b_id": saga_id})
        if not rows:
            raise SagaNotFoundError(saga_id)
        raise RuntimeError(f"Saga {saga_id} is at version {rows[0][0]}, not {current_version}")

    async def update_status(self, saga_id: uuid.UUID, status: SagaStatus) -> None:
        if await self._write(self._sql.update_status, {"b_id": saga_id, "b_status": SagaStatus(status).value}) != 1:
            raise SagaNotFoundError(saga_id)

    async def log_step(
        self,
        saga_id: uuid.UUID,
        step_name: str,
        action: typing.Literal["act", "compensate"],
        status: SagaStepStatus,
        details: str | None = None,
    ) -> None:
        params = {
            "b_id": saga_id,
            "b_step_name": step_name,
            "b_action": action,
            "b_step_status": SagaStepStatus(status).value,
            "b_details": details,
        }
        # INSERT ... SELECT FROM saga_executions WHERE id = :id: no row appended for an unknown saga.
        if await self._write(self._sql.log_step, params) != 1:
            raise SagaNotFoundError(saga_id)

    async def load_saga_state(
        self, saga_id: uuid.UUID, *, read_for_update: bool = False
    ) -> tuple[SagaStatus, JsonDict, int]:
        # ``read_for_update`` is accepted for python-cqrs compatibility only: every call here is its
        # own short transaction, so a row lock would end with the read; writes are fenced by lease.
        record = await self.get_saga(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        return record.status, record.context, record.version

    async def get_step_history(self, saga_id: uuid.UUID) -> list[SagaLogEntry]:
        rows = await self._read(self._sql.history_or_missing, {"b_id": saga_id})
        if not rows:
            raise SagaNotFoundError(saga_id)
        return [_log_entry(row) for row in rows if row[-1] is not None]

    async def get_sagas_for_recovery(
        self,
        limit: int,
        max_recovery_attempts: int = 5,
        stale_after_seconds: float | None = None,
        saga_name: str | None = None,
    ) -> list[uuid.UUID]:
        params: dict[str, typing.Any] = {"b_max_attempts": max_recovery_attempts, "b_limit": max(limit, 0)}
        if saga_name is not None:
            params["b_name"] = saga_name
        if stale_after_seconds is not None:
            params["b_stale"] = stale_after_seconds
        statement = self._sql.for_recovery(saga_name is not None, stale_after_seconds is not None)
        return [_uuid(row[0]) for row in await self._read(statement, params)]

    async def increment_recovery_attempts(
        self, saga_id: uuid.UUID, new_status: SagaStatus | None = None
    ) -> None:
        params: dict[str, typing.Any] = {"b_id": saga_id}
        if new_status is not None:
            params["b_status"] = SagaStatus(new_status).value
        if await self._write(self._sql.increment_attempts(new_status is not None), params) != 1:
            raise SagaNotFoundError(saga_id)

    async def set_recovery_attempts(self, saga_id: uuid.UUID, attempts: int) -> None:
        if await self._write(self._sql.set_attempts, {"b_id": saga_id, "b_attempts": attempts}) != 1:
            raise SagaNotFoundError(saga_id)

    # -- operators ---------------------------------------------------------------------------------------

    async def get_saga(self, saga_id: uuid.UUID) -> SagaRecord | None:
        rows = await self._read(self._sql.get, {"b_id": saga_id})
        return _record(rows[0]) if rows else None

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        name: str | None = None,
        older_than: datetime.timedelta | None = None,
        correlation_id: str | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        params: dict[str, typing.Any] = {"b_limit": max(limit, 0)}
        if status is not None:
            params["b_status"] = SagaStatus(status).value
        if name is not None:
            params["b_name"] = name
        if older_than is not None:
            params["b_older"] = older_than.total_seconds()
        if correlation_id is not None:
            params["b_correlation_id"] = correlation_id
        statement = self._sql.list_sagas(
            status is not None, name is not None, older_than is not None, correlation_id is not None
        )
        return [_record(row) for row in await self._read(statement, params)]

    async def park_saga(self, saga_id: uuid.UUID, reason: str) -> None:
        if await self._write(self._sql.park, {"b_id": saga_id, "b_error": reason}) != 1:
            raise SagaNotFoundError(saga_id)

    async def reset_saga(self, saga_id: uuid.UUID) -> None:
        # One UPDATE: the status comes from an EXISTS over the saga's log (compensation started?).
        if await self._write(self._sql.reset, {"b_id": saga_id}) != 1:
            raise SagaNotFoundError(saga_id)

    async def purge_sagas(
        self,
        *,
        older_than: datetime.timedelta,
        status: SagaStatus | None = None,
        limit: int = 1000,
    ) -> int:
        """Delete up to ``limit`` finished sagas created more than ``older_than`` ago, oldest first,
        with their step logs; returns how many sagas were deleted.

        Without ``status``: ``completed`` and ``failed`` sagas. ``status=SagaStatus.PARKED``
        deletes parked ones; an unfinished status or a negative age raises ``ValueError``. A saga
        with an owner is never deleted. Call it in a loop until it returns less than ``limit`` to
        purge a large backlog in short transactions.
        """
        statements = self._sql.purge(purge_filter(older_than, status))
        params = {"b_older": older_than.total_seconds(), "b_limit": max(limit, 0)}
        return await self._call_write(self._purge_now, statements, params)

    def _purge_now(self, statements: tuple[typing.Any, ...], params: dict[str, typing.Any]) -> int:
        with self._sync.begin() as conn:
            deleted = 0
            for statement in statements:
                deleted = conn.execute(statement, params).rowcount  # the last one deletes the sagas
        return deleted


if typing.TYPE_CHECKING:
    from cqrs.saga.storage.protocol import SagaStorage

    def _implements_the_protocol(storage: SqlAlchemySagaStorage) -> SagaStorage:
        return storage
