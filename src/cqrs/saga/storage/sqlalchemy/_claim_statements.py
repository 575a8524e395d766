"""The claim statements: take sagas over and read them back with their histories, in as few statements as
each database allows.

- PostgreSQL: one statement per claim, whether of one saga (`claim_saga`) or
  of many (`claim_recoverable`). The sagas are locked in a CTE (``FOR
  UPDATE``, many with ``SKIP LOCKED``), updated from it by a data-modifying
  CTE, and the final ``SELECT`` returns each claimed row with its history as
  one ``json_agg`` value. A one-saga claim that is not granted returns the
  stored row instead (``UNION ALL``), with ``fresh`` NULL.
- SQLite: ``UPDATE ... RETURNING`` with the history as a ``json_group_array``
  subquery in the ``RETURNING`` list (one statement; a one-saga claim that is
  not granted reads the row and history with a second one).
- MySQL and MariaDB (no ``UPDATE ... RETURNING``): the claim's ``UPDATE``
  (after the candidate and locking reads of `claim_recoverable`), then one
  read of the claimed rows joined with their log rows (``LEFT JOIN``, a row
  per log entry), in place of a read of the rows and another of the logs.

Why PostgreSQL's rows carry ``fresh``: a statement reads in the snapshot it
started with, so its history misses a log row committed by a transaction that
ended while the claim was waiting for, or racing to, the saga's row lock; the
lock itself is taken on the latest version of the row, whose ``WHERE`` is
checked again. Every write of a log row also updates its saga's row, in the
same transaction, so such a log row exists only if the row version locked is
not the one the snapshot holds. ``fresh`` compares the two versions' ``xmin``
(the transaction that wrote each): true means the history read is complete;
false means it may not be, and the caller reads that saga's history again
(a second round trip, only then).
"""

from __future__ import annotations

import typing

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect

from cqrs.saga.storage.sqlalchemy._schema import (
    LOG_COLUMNS,
    RECORD_COLUMNS,
    RESUMABLE_CLAUSE,
    saga_executions,
    saga_log,
)

if typing.TYPE_CHECKING:
    from cqrs.saga.storage.sqlalchemy._statements import Statements

__all__ = ["ClaimStatements"]

_t = saga_executions
_l = saga_log
_RECORD_NAMES = [column.name for column in RECORD_COLUMNS]
# A constant of the statement, rendered into the SQL rather than sent as a parameter.
_ONE = sa.literal_column("1", sa.Integer())


class ClaimStatements:
    """The claim statements of one dialect family, built on first use (see the module doc)."""

    def __init__(self, sql: Statements) -> None:
        self._sql = sql
        self._cache: dict[tuple[typing.Hashable, ...], typing.Any] = {}
        self.postgres = sql.postgres
        self.mysql = sql.mysql

    def _cached(self, key: tuple[typing.Hashable, ...], build: typing.Callable[[], typing.Any]) -> typing.Any:
        statement = self._cache.get(key)
        if statement is None:
            statement = self._cache[key] = build()
        return statement

    # -- the history as one value ---------------------------------------------------------------------

    def _history(self, saga_id: sa.ColumnElement[typing.Any]) -> sa.ScalarSelect[typing.Any]:
        """The saga's log rows as one JSON array of ``[step_name, action, status, created_at, details,
        response, seq]`` arrays (in ``seq`` order on PostgreSQL; the reader sorts them elsewhere)."""
        lg = _l
        if self.postgres:
            entry = sa.func.json_build_array(
                lg.c.step_name, lg.c.action, lg.c.status, lg.c.created_at, lg.c.details, lg.c.response, lg.c.seq
            )
            values = sa.func.json_agg(pg_dialect.aggregate_order_by(entry, lg.c.seq), type_=sa.JSON)
        else:  # SQLite: the response is JSON text, embedded as JSON by json()
            entry = sa.func.json_array(
                lg.c.step_name, lg.c.action, lg.c.status, lg.c.created_at, lg.c.details, sa.func.json(lg.c.response),
                lg.c.seq,
            )
            values = sa.func.json_group_array(entry, type_=sa.JSON)
        return sa.select(values).where(lg.c.saga_id == saga_id).scalar_subquery()

    # -- PostgreSQL -------------------------------------------------------------------------------------

    def _pg_claimed(self, locked: sa.CTE, values: dict[str, typing.Any]) -> sa.CTE:
        """The data-modifying CTE taking the ``locked`` rows over; it returns them with the ``xmin`` locked."""
        return (
            sa.update(_t).where(_t.c.id == locked.c.id).values(**values)
            .returning(*RECORD_COLUMNS, locked.c.seen).cte("claimed")
        )

    def _pg_rows(self, claimed: sa.CTE, retry: sa.ColumnElement[typing.Any]) -> sa.Select[typing.Any]:
        """The claimed rows, each with ``fresh`` (see the module doc), its history and ``retry``."""
        snapshot = _t.alias("snapshot")
        fresh = (
            sa.select(sa.literal_column("snapshot.xmin") == claimed.c.seen)
            .where(snapshot.c.id == claimed.c.id)
            .scalar_subquery()
        )
        return sa.select(
            *(claimed.c[name] for name in _RECORD_NAMES),
            fresh.label("fresh"),
            self._history(claimed.c.id).label("history"),
            retry,
        )

    @staticmethod
    def _locked_columns() -> tuple[sa.ColumnElement[typing.Any], ...]:
        return _t.c.id, sa.literal_column("saga_executions.xmin").label("seen")

    # -- the statements -----------------------------------------------------------------------------------

    def _claimable(self) -> sa.ColumnElement[bool]:
        """A saga `claim_saga` may take: resumable, its lease free, expired or ``b_owner``'s."""
        sql = self._sql
        return sa.and_(RESUMABLE_CLAUSE, sa.or_(sql.lease_free, _t.c.owner == sql.bind("owner", _t.c.owner)))

    def _values(self, recovery: bool) -> dict[str, typing.Any]:
        """What a claim writes: the new lease (and for recovery, one more attempt)."""
        sql = self._sql
        values = {
            "owner": sql.bind("owner", _t.c.owner),
            "lease_epoch": _t.c.lease_epoch + _ONE,
            "lease_expires_at": sql.expiry,
            "status": sql.pending_to_running,
            "updated_at": sql.now,
        }
        if recovery:
            values["recovery_attempts"] = _t.c.recovery_attempts + _ONE
        return values

    def _pg_claim_by_id(self, which: sa.ColumnElement[bool], *, skip_locked: bool) -> typing.Any:
        """PostgreSQL: the sagas ``which`` picks, claimed where `_claimable` (see `claim_one`, `claim_ids`)."""
        claimable = self._claimable()
        locked = (
            sa.select(*self._locked_columns()).where(which, claimable)
            .with_for_update(skip_locked=skip_locked).cte("locked")
        )
        claimed = self._pg_claimed(locked, self._values(recovery=False))
        refused = sa.select(
            *RECORD_COLUMNS,
            sa.null().label("fresh"),
            self._history(_t.c.id).label("history"),
            claimable.label("retry"),
        ).where(which, ~sa.exists(sa.select(claimed.c.id).where(claimed.c.id == _t.c.id)))
        return sa.union_all(self._pg_rows(claimed, sa.false().label("retry")), refused)

    def claim_one(self) -> typing.Any:
        """`claim_saga`'s claim: its record, ``fresh`` and its history.

        PostgreSQL: one statement, one row whether granted (``fresh`` true or false) or not (``fresh``
        NULL: the stored row as the statement's snapshot holds it), none for an unknown saga; it waits
        for the saga's row lock. SQLite: the ``UPDATE ... RETURNING`` (no row if not granted: then
        `get_one`). MySQL: the plain claim ``UPDATE`` (its row count), then `get_one`.
        """

        def build() -> typing.Any:
            sql = self._sql
            saga_id = sql.bind("id", _t.c.id)
            if self.mysql:
                return sql.claim
            if self.postgres:
                return self._pg_claim_by_id(_t.c.id == saga_id, skip_locked=False)
            return (
                sa.update(_t).where(_t.c.id == saga_id, self._claimable()).values(**self._values(recovery=False))
                .returning(*RECORD_COLUMNS, self._history(_t.c.id).label("history"))
            )

        return self._cached(("one",), build)

    def claim_ids(self) -> typing.Any:
        """PostgreSQL: the one-saga claims of ``b_ids`` (several callers' at once, see `_claim_batches`), as
        `claim_one` but skipping rows another transaction holds: a refused row with ``retry`` true was
        claimable in the statement's snapshot (locked meanwhile, or changed): claim it with `claim_one`."""

        def build() -> typing.Any:
            ids = sa.bindparam("b_ids", type_=pg_dialect.ARRAY(_t.c.id.type))
            return self._pg_claim_by_id(_t.c.id == sa.any_(ids), skip_locked=True)

        return self._cached(("ids",), build)

    def get_one(self) -> typing.Any:
        """SQLite: the stored row with its history (one row, none for an unknown saga). MySQL: the stored
        row joined with its log rows (a row per entry; one with NULL log columns for an empty history)."""

        def build() -> typing.Any:
            saga_id = self._sql.bind("id", _t.c.id)
            if self.mysql:
                return self._joined(_t.c.id == saga_id)
            return sa.select(*RECORD_COLUMNS, self._history(_t.c.id).label("history")).where(_t.c.id == saga_id)

        return self._cached(("get",), build)

    def claim_many(self, names: bool, max_attempts: bool) -> typing.Any:
        """`claim_recoverable` on PostgreSQL and SQLite: up to ``b_limit`` sagas taken over, oldest expiry
        first, each with its history (PostgreSQL: and ``fresh``)."""

        def build() -> typing.Any:
            sql = self._sql
            conditions = [RESUMABLE_CLAUSE, sql.lease_free]
            if names:
                names_param = (
                    sa.any_(sa.bindparam("b_names", type_=pg_dialect.ARRAY(sa.String())))
                    if self.postgres else sa.bindparam("b_names", expanding=True)
                )
                conditions.append(_t.c.name == names_param if self.postgres else _t.c.name.in_(names_param))
            if max_attempts:
                conditions.append(_t.c.recovery_attempts < sa.bindparam("b_max_attempts", type_=sa.Integer()))
            order = (sa.func.coalesce(_t.c.lease_expires_at, sql.now), _t.c.created_at, _t.c.id)
            limit = sa.bindparam("b_limit", type_=sa.Integer())
            values = self._values(recovery=True)
            if self.postgres:
                # The row-locking CTE runs exactly once; rows another claimer has locked are skipped.
                locked = (
                    sa.select(*self._locked_columns()).where(*conditions).order_by(*order).limit(limit)
                    .with_for_update(skip_locked=True).cte("candidates")
                )
                return self._pg_rows(self._pg_claimed(locked, values), sa.false().label("retry"))
            # SQLite: one statement holds the single write lock from its start to its end.
            candidates = sa.select(_t.c.id).where(*conditions).order_by(*order).limit(limit)
            return (
                sa.update(_t).where(_t.c.id.in_(candidates)).values(**values)
                .returning(*RECORD_COLUMNS, self._history(_t.c.id).label("history"))
            )

        return self._cached(("many", names, max_attempts), build)

    def get_many(self) -> sa.Select[typing.Any]:
        """MySQL: the sagas ``b_ids`` joined with their log rows, in one read."""

        def build() -> sa.Select[typing.Any]:
            return self._joined(_t.c.id.in_(sa.bindparam("b_ids", type_=_t.c.id.type, expanding=True)))

        return typing.cast("sa.Select[typing.Any]", self._cached(("get_many",), build))

    @staticmethod
    def _joined(where: sa.ColumnElement[bool]) -> sa.Select[typing.Any]:
        return (
            sa.select(*RECORD_COLUMNS, *LOG_COLUMNS[1:])
            .select_from(_t.outerjoin(_l, _l.c.saga_id == _t.c.id))
            .where(where)
            .order_by(_t.c.id, _l.c.seq)
        )
