"""The outbox's statements, per dialect family (see `_outbox_schema` for the table and its indexes).

Writing rows with a start or a checkpoint:

- PostgreSQL: the messages are one JSON array parameter, expanded by
  ``jsonb_to_recordset`` and inserted ``FROM u``, ``u`` being the start's
  ``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` or the checkpoint's fenced
  ``UPDATE ... RETURNING id`` as a data-modifying CTE (`Statements` builds
  those): one statement, whose rows exist only if the saga's write matched.
  The row count is the number of messages inserted (0: nothing matched).
- SQLite and MySQL/MariaDB: `insert` run for every message (executemany) in
  the start's or checkpoint's own transaction, after its write matched.

Claims (`claim`) pick pending rows that are due and not leased, each the
earliest unpublished row of its saga, oldest ``seq`` first:

- PostgreSQL: ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)
  RETURNING``, one statement;
- SQLite: ``UPDATE ... WHERE seq IN (SELECT ... LIMIT n) RETURNING`` under the
  single write lock;
- MySQL/MariaDB: a plain read of candidates, then those still claimable
  locked by primary key with ``FOR UPDATE SKIP LOCKED`` (without the per-saga
  test, which a locking read would turn into locks on, or skips of, the
  earlier rows), updated by ``seq`` and read back (see `_outbox_transactions`).

A row found claimable stays so as far as order goes: the earlier rows of its
saga were all committed before it (a saga's writes are serialized by its
lease), so any read that sees it sees them, and a published row never becomes
unpublished. Only the row's own state (lease, status, due time) can change
under a claim, and the locking step checks that again on the latest version.
"""

from __future__ import annotations

import typing

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect

from cqrs.outbox.models import OutboxStatus
from cqrs.saga.storage.sqlalchemy._outbox_schema import OUTBOX_COLUMNS, saga_outbox
from cqrs.saga.storage.sqlalchemy._schema import LOG_INSERT_COLUMNS, literal, saga_executions, saga_log

if typing.TYPE_CHECKING:
    from cqrs.saga.storage.sqlalchemy._statements import Statements

__all__ = ["OutboxStatements"]

_o = saga_outbox
_ZERO = sa.literal_column("0", sa.Integer())
_NULL = sa.null()
_PENDING = literal(OutboxStatus.PENDING.value)
_PUBLISHED = literal(OutboxStatus.PUBLISHED.value)
_PARKED = literal(OutboxStatus.PARKED.value)
_INSERT_COLUMNS = ["message_id", "saga_id", "topic", "name", "payload", "headers", "status", "attempts", "created_at"]


def _integer(name: str) -> sa.BindParameter[int]:
    return sa.bindparam(f"b_{name}", type_=sa.Integer())


def _seconds(name: str) -> sa.BindParameter[float]:
    return sa.bindparam(f"b_{name}", type_=sa.Float())


class OutboxStatements:
    """The outbox statements of one dialect family, built on first use and reused (as `Statements`)."""

    def __init__(self, sql: Statements) -> None:
        self.sql = sql
        self.postgres = sql.postgres
        self.mysql = sql.mysql
        self._cache: dict[tuple[typing.Hashable, ...], typing.Any] = {}
        now = sql.now
        o = _o
        self.expiry = sql.expiry
        self.insert = sa.insert(o).values(
            message_id=sql.bind("message_id", o.c.message_id),
            saga_id=sql.bind("id", o.c.saga_id),
            topic=sql.bind("topic", o.c.topic),
            name=sql.bind("message_name", o.c.name),
            payload=sql.bind("payload", o.c.payload),
            headers=sql.bind("headers", o.c.headers),
            status=_PENDING,
            attempts=_ZERO,
            created_at=now,
        )
        owner = sql.bind("owner", o.c.owner)
        held = sa.and_(o.c.owner == owner, o.c.status == _PENDING)
        # PostgreSQL: the seqs as one array parameter, so the statement's text is fixed (the fast path runs it).
        marked = (
            o.c.seq == sa.any_(sa.bindparam("b_seqs", type_=pg_dialect.ARRAY(sa.BigInteger())))
            if self.postgres
            else o.c.seq.in_(sa.bindparam("b_seqs", expanding=True))
        )
        self.mark_published = (
            sa.update(o)
            .where(marked, held)
            .values(status=_PUBLISHED, published_at=now, owner=_NULL, lease_expires_at=_NULL)
        )
        failed = sa.update(o).where(o.c.seq == sa.bindparam("b_seq", type_=o.c.seq.type), held)
        gave_up = {"attempts": o.c.attempts + sa.literal_column("1"), "error": sql.bind("error", o.c.error),
                   "owner": _NULL, "lease_expires_at": _NULL}
        self.retry_later = failed.values(next_attempt_at=sql.clock.shifted(_seconds("retry_in")), **gave_up)
        self.park = failed.values(status=_PARKED, **gave_up)
        self.backlog = sa.select(sa.func.count()).select_from(o).where(o.c.status == _PENDING)
        self.requeue = (
            sa.update(o)
            .where(o.c.message_id == sql.bind("message_id", o.c.message_id), o.c.status != _PUBLISHED)
            .values(status=_PENDING, attempts=_ZERO, next_attempt_at=_NULL)
        )
        self.by_seqs = sa.select(*OUTBOX_COLUMNS).where(o.c.seq.in_(sa.bindparam("b_seqs", expanding=True)))
        older = o.c.published_at <= sql.clock.shifted(-_seconds("older"))
        self.purgeable = (
            sa.select(o.c.seq)
            .where(o.c.status == _PUBLISHED, older)
            .order_by(o.c.published_at, o.c.seq)
            .limit(_integer("limit"))
        )
        # MySQL cannot delete from a table its own subquery reads: it deletes the seqs read first.
        self.purge = (
            sa.delete(o).where(o.c.seq.in_(sa.bindparam("b_seqs", expanding=True)))
            if self.mysql
            else sa.delete(o).where(o.c.seq.in_(self.purgeable.scalar_subquery()))
        )

    def _cached(self, key: tuple[typing.Hashable, ...], build: typing.Callable[[], typing.Any]) -> typing.Any:
        statement = self._cache.get(key)
        if statement is None:
            statement = self._cache[key] = build()
        return statement

    # -- rows written with a saga's write (PostgreSQL) ------------------------------------------------

    def inserted_from(self, written: sa.CTE) -> sa.Insert:
        """PostgreSQL: ``INSERT INTO saga_outbox ... SELECT ... FROM written JOIN jsonb_to_recordset(:b_outbox)``.

        ``written`` is a CTE returning the saga's ``id`` (one row if its write matched, none if not).
        ``b_outbox`` is a JSON array of ``{message_id, topic, name, payload, headers, position}``.
        """
        o = _o
        messages = (
            sa.func.jsonb_to_recordset(self.sql.bind("outbox", o.c.payload))
            .table_valued(
                sa.column("message_id", pg_dialect.UUID(as_uuid=True)),
                sa.column("topic", sa.Text()),
                sa.column("name", sa.Text()),
                sa.column("payload", pg_dialect.JSONB()),
                sa.column("headers", pg_dialect.JSONB()),
                sa.column("position", sa.Integer()),
            )
            .render_derived(name="m", with_types=True)
        )
        m = messages.c
        rows = (
            sa.select(m.message_id, written.c.id, m.topic, m.name, m.payload, m.headers, _PENDING, _ZERO, self.sql.now)
            .select_from(written.join(messages, sa.true()))
            .order_by(m.position)  # seq in the order the step emitted them
        )
        return sa.insert(o).from_select(_INSERT_COLUMNS, rows)

    def with_update(self, update: sa.Update, entry: bool) -> sa.Insert:
        """PostgreSQL: a checkpoint's fenced ``update``, its log row (if ``entry``) and its outbox rows in one
        statement, ``WITH u AS (UPDATE ... RETURNING id), l AS (INSERT INTO saga_log ... FROM u) INSERT INTO
        saga_outbox ... FROM u``: its row count is the number of outbox rows, 0 if the update did not match."""
        sql = self.sql
        updated = update.returning(saga_executions.c.id).cte("u")
        rows = self.inserted_from(updated)
        if not entry:
            return rows
        v = sql.log_values
        log = sa.insert(saga_log).from_select(
            LOG_INSERT_COLUMNS,
            sa.select(updated.c.id, v["step_name"], v["action"], v["status"], v["details"], v["response"], sql.now),
        )
        return rows.add_cte(log.cte("l"))

    # -- claims ----------------------------------------------------------------------------------------

    def _claimable(self, row: sa.TableClause | sa.Table | typing.Any) -> list[sa.ColumnElement[bool]]:
        """``row`` (an alias of the outbox) is pending, due, not leased, and the earliest unpublished row of
        its saga."""
        now = self.sql.now
        earlier = _o.alias("earlier")
        return [
            row.c.status == _PENDING,
            sa.or_(row.c.next_attempt_at.is_(None), row.c.next_attempt_at <= now),
            sa.or_(row.c.owner.is_(None), row.c.lease_expires_at.is_(None), row.c.lease_expires_at <= now),
            ~sa.exists().where(
                earlier.c.saga_id == row.c.saga_id, earlier.c.seq < row.c.seq, earlier.c.status != _PUBLISHED
            ),
        ]

    def _due(self, row: typing.Any) -> list[sa.ColumnElement[bool]]:
        """The claim conditions on the row itself (not its saga's other rows), for MySQL's locking step."""
        return self._claimable(row)[:3]

    def claim(self) -> typing.Any:
        """PostgreSQL and SQLite: the claiming ``UPDATE ... RETURNING`` of up to ``b_limit`` rows."""

        def build() -> typing.Any:
            o = _o
            candidate = _o.alias("candidate")
            picked = (
                sa.select(candidate.c.seq)
                .where(*self._claimable(candidate))
                .order_by(candidate.c.seq)
                .limit(_integer("limit"))
            )
            values = {"owner": self.sql.bind("owner", o.c.owner), "lease_expires_at": self.expiry}
            if self.postgres:
                # The row-locking CTE runs once; rows another claimer holds are skipped, not waited for.
                locked = picked.with_for_update(skip_locked=True).cte("claimable")
                return sa.update(o).where(o.c.seq == locked.c.seq).values(**values).returning(*OUTBOX_COLUMNS)
            # SQLite: one statement holds the single write lock from its start to its end.
            return sa.update(o).where(o.c.seq.in_(picked.scalar_subquery())).values(**values).returning(*OUTBOX_COLUMNS)

        return self._cached(("claim",), build)

    def candidates(self) -> sa.Select[typing.Any]:
        """MySQL, a claim's first step: up to ``b_window`` claimable seqs after ``b_after``, read without locks."""

        def build() -> sa.Select[typing.Any]:
            candidate = _o.alias("candidate")
            return (
                sa.select(candidate.c.seq)
                .where(*self._claimable(candidate), candidate.c.seq > sa.bindparam("b_after", type_=_o.c.seq.type))
                .order_by(candidate.c.seq)
                .limit(_integer("window"))
            )

        return typing.cast("sa.Select[typing.Any]", self._cached(("candidates",), build))

    def lock(self) -> sa.Select[typing.Any]:
        """MySQL, a claim's second step: lock up to ``b_limit`` of ``b_seqs`` still due and free, by primary key,
        skipping rows another transaction holds."""

        def build() -> sa.Select[typing.Any]:
            o = _o
            return (
                sa.select(o.c.seq)
                .with_hint(o, "FORCE INDEX (PRIMARY)")
                .where(o.c.seq.in_(sa.bindparam("b_seqs", expanding=True)), *self._due(o))
                .order_by(o.c.seq)
                .limit(_integer("limit"))
                .with_for_update(skip_locked=True)
            )

        return typing.cast("sa.Select[typing.Any]", self._cached(("lock",), build))

    def claim_seqs(self) -> sa.Update:
        """MySQL, a claim's third step: lease the locked rows ``b_seqs`` to ``b_owner``."""

        def build() -> sa.Update:
            o = _o
            return (
                sa.update(o)
                .where(o.c.seq.in_(sa.bindparam("b_seqs", expanding=True)))
                .values(owner=self.sql.bind("owner", o.c.owner), lease_expires_at=self.expiry)
            )

        return typing.cast(sa.Update, self._cached(("claim_seqs",), build))

    # -- operators ---------------------------------------------------------------------------------------

    def list(self, status: bool, saga: bool) -> sa.Select[typing.Any]:
        """Rows in ``seq`` order, up to ``b_limit``, of status ``b_status`` and saga ``b_saga_id`` if asked."""

        def build() -> sa.Select[typing.Any]:
            o = _o
            conditions: list[sa.ColumnElement[bool]] = []
            if status:
                conditions.append(o.c.status == self.sql.bind("outbox_status", o.c.status))
            if saga:
                conditions.append(o.c.saga_id == self.sql.bind("saga_id", o.c.saga_id))
            return sa.select(*OUTBOX_COLUMNS).where(*conditions).order_by(o.c.seq).limit(_integer("limit"))

        return typing.cast("sa.Select[typing.Any]", self._cached(("list", status, saga), build))

    def of_purged_sagas(self, sagas: typing.Any) -> sa.Delete:
        """The published rows of the sagas ``sagas`` selects (`purge_sagas` deletes them with the sagas)."""
        return sa.delete(_o).where(_o.c.saga_id.in_(sagas), _o.c.status == _PUBLISHED)

