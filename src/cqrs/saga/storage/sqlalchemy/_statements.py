"""Every statement the SQL storage runs, built once per storage for its dialect family.

The three families write the same rows with different statements:

- PostgreSQL: every write is one statement. A checkpoint with a log entry
  is ``WITH u AS (UPDATE ... RETURNING id) INSERT INTO saga_log ... SELECT
  ... FROM u`` (the log row exists only if the fenced update matched). Claims,
  the claimed sagas' histories included, are one statement each too (see
  `_claim_statements`).
- SQLite (no data-modifying CTEs): the fenced ``UPDATE``, then the log row's
  ``INSERT`` only if it matched, in one transaction; `claim_recoverable` is
  ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING`` under SQLite's
  single write lock (`_claim_statements`).
- MySQL and MariaDB (no ``UPDATE ... RETURNING``, no ``ON CONFLICT``): the
  same ``UPDATE`` then ``INSERT`` transaction as SQLite; a start is a plain
  ``INSERT`` whose duplicate-key error means "already stored"; claims pick
  candidates with a plain read, lock them by primary key with ``FOR UPDATE
  SKIP LOCKED``, update them by id and read them back (see
  `recoverable_candidates`).

Parameters are named ``b_<name>``, so none is taken for a column; statuses and
other constants are rendered into the SQL. `json_params` names the parameters
that carry JSON, for executors that encode them themselves.
"""

from __future__ import annotations

import typing

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import StepEntry
from cqrs.saga.storage.sqlalchemy._outbox_statements import OutboxStatements
from cqrs.saga.storage.sqlalchemy._schema import (
    LOG_COLUMNS,
    LOG_INSERT_COLUMNS,
    RECORD_COLUMNS,
    RESUMABLE_CLAUSE,
    Clock,
    family,
    literal,
    saga_executions,
    saga_log,
)

__all__ = ["Statements"]

_t = saga_executions
_l = saga_log
# Constants of the statements, rendered into the SQL rather than sent as parameters.
_ZERO = sa.literal_column("0", sa.Integer())
_ONE = sa.literal_column("1", sa.Integer())
_NULL = sa.null()


def _integer(name: str) -> sa.BindParameter[int]:
    return sa.bindparam(f"b_{name}", type_=sa.Integer())


def _seconds(name: str) -> sa.BindParameter[float]:
    return sa.bindparam(f"b_{name}", type_=sa.Float())


def _ids(name: str = "ids") -> sa.BindParameter[typing.Any]:
    return sa.bindparam(f"b_{name}", type_=_t.c.id.type, expanding=True)


class Statements:
    """The statements of one dialect family; the variants are built on first use, then reused."""

    def __init__(self, dialect: str) -> None:
        self.family = family(dialect)
        self.postgres = self.family == "postgresql"
        self.mysql = self.family == "mysql"
        self._json: set[str] = set()
        self._cache: dict[tuple[typing.Hashable, ...], typing.Any] = {}
        clock = self.clock = Clock(dialect)
        now = self.now = clock.now
        t, lg = _t, _l
        self.expiry = clock.shifted(_seconds("lease_seconds"))
        saga_id = self.bind("id", t.c.id)
        self.holds = sa.and_(
            t.c.id == saga_id, t.c.owner == self.bind("owner", t.c.owner),
            t.c.lease_epoch == self.bind("epoch", t.c.lease_epoch),
        )
        self.lease_free = sa.or_(t.c.owner.is_(None), t.c.lease_expires_at.is_(None), t.c.lease_expires_at <= now)
        self.pending_to_running = sa.case(
            (t.c.status == literal(SagaStatus.PENDING.value), literal(SagaStatus.RUNNING.value)),
            else_=t.c.status,
        )
        self.log_values = {
            "step_name": self.bind("step_name", lg.c.step_name),
            "action": self.bind("action", lg.c.action),
            "status": self.bind("step_status", lg.c.status),
            "details": self.bind("details", lg.c.details),
            "response": self.bind("response", lg.c.response),
        }

        new_saga = {
            "id": saga_id,
            "name": self.bind("name", t.c.name),
            "definition_version": self.bind("definition_version", t.c.definition_version),
            "status": self.bind("status", t.c.status),
            "context": self.bind("context", t.c.context),
            "version": _ONE,
            "correlation_id": self.bind("correlation_id", t.c.correlation_id),
            "owner": self.bind("owner", t.c.owner),
            "lease_epoch": _ONE,
            "lease_expires_at": self.expiry,
            "recovery_attempts": _ZERO,
            "created_at": now,
            "updated_at": now,
            "trace_context": self.bind("trace_context", t.c.trace_context),
        }
        if self.mysql:
            # The caller reads a duplicate-key error as "already stored" (INSERT IGNORE would also
            # turn a too-long value into a silent truncation).
            self.start: typing.Any = sa.insert(t).values(new_saga)
        else:
            insert = pg_dialect.insert if self.postgres else sqlite_dialect.insert
            self.start = insert(t).values(new_saga).on_conflict_do_nothing(index_elements=[t.c.id])
        self.outbox = OutboxStatements(self)
        # PostgreSQL: a start with outbox messages is one statement too; their rows exist only if the
        # saga's row was inserted. Elsewhere `start` runs, then the rows, in one transaction.
        self.start_with_outbox: typing.Any = (
            self.outbox.inserted_from(self.start.returning(t.c.id).cte("u")) if self.postgres else None
        )

        claim = (
            sa.update(t)
            .where(
                t.c.id == saga_id,
                RESUMABLE_CLAUSE,
                sa.or_(self.lease_free, t.c.owner == self.bind("owner", t.c.owner)),
            )
            .values(
                owner=self.bind("owner", t.c.owner),
                lease_epoch=t.c.lease_epoch + _ONE,
                lease_expires_at=self.expiry,
                status=self.pending_to_running,
                updated_at=now,
            )
        )
        self.claim = claim if self.mysql else claim.returning(*RECORD_COLUMNS)
        self.get = sa.select(*RECORD_COLUMNS).where(t.c.id == saga_id)
        self.history = sa.select(*LOG_COLUMNS).where(lg.c.saga_id == saga_id).order_by(lg.c.seq)
        # One read that tells an unknown saga (no row) from an empty history (one row of NULLs).
        self.history_or_missing = (
            sa.select(t.c.id, *LOG_COLUMNS[1:])
            .select_from(t.outerjoin(lg, lg.c.saga_id == t.c.id))
            .where(t.c.id == saga_id)
            .order_by(lg.c.seq)
        )
        # The histories of claimed sagas, read again after a PostgreSQL claim whose snapshot may miss a log
        # row the former holder committed while the claim was waiting for, or racing to, the saga's row
        # lock (see `_claim_statements`).
        self.histories = sa.select(*LOG_COLUMNS).where(lg.c.saga_id.in_(_ids())).order_by(lg.c.seq)
        self.renew = sa.update(t).where(self.holds).values(lease_expires_at=self.expiry, updated_at=now)
        self.release = sa.update(t).where(self.holds).values(owner=_NULL, lease_expires_at=_NULL, updated_at=now)
        self.append = sa.insert(lg).values(saga_id=saga_id, created_at=now, **self.log_values)
        self.park = (
            sa.update(t)
            .where(t.c.id == saga_id)
            .values(
                status=literal(SagaStatus.PARKED.value),
                error=self.bind("error", t.c.error),
                owner=_NULL,
                lease_expires_at=_NULL,
                updated_at=now,
            )
        )
        compensating = sa.exists().where(
            lg.c.saga_id == t.c.id,
            sa.or_(lg.c.action == literal("compensate"), lg.c.status == literal(SagaStepStatus.FAILED.value)),
        )
        self.reset = (
            sa.update(t)
            .where(t.c.id == saga_id)
            .values(
                status=sa.case(
                    (compensating, literal(SagaStatus.COMPENSATING.value)), else_=literal(SagaStatus.RUNNING.value)
                ),
                recovery_attempts=_ZERO,
                owner=_NULL,
                lease_expires_at=_NULL,
                updated_at=now,
            )
        )

    def bind(self, name: str, column: sa.Column[typing.Any]) -> sa.BindParameter[typing.Any]:
        """A parameter ``b_<name>`` typed like ``column`` (a JSON column's parameter joins `json_params`)."""
        if isinstance(column.type, sa.JSON):
            self._json.add(f"b_{name}")
        return sa.bindparam(f"b_{name}", type_=column.type)

    @property
    def json_params(self) -> typing.AbstractSet[str]:
        """The names of the parameters that carry JSON (contexts and responses), of every statement built so far
        (a live view: a statement's are in it once the statement is built)."""
        return self._json

    def _cached(self, key: tuple[typing.Hashable, ...], build: typing.Callable[[], typing.Any]) -> typing.Any:
        statement = self._cache.get(key)
        if statement is None:
            statement = self._cache[key] = build()
        return statement

    def _logged(self, update: sa.Update) -> typing.Any:
        """PostgreSQL: ``update`` and the log row in one statement; rowcount is 1 only if the update matched."""
        updated = update.returning(_t.c.id).cte("u")
        v = self.log_values
        return sa.insert(_l).from_select(
            LOG_INSERT_COLUMNS,
            sa.select(updated.c.id, v["step_name"], v["action"], v["status"], v["details"], v["response"], self.now),
        )

    # -- engine writes -------------------------------------------------------------------------------

    def checkpoint_update(self, context: bool, status: bool, error: bool, release: bool) -> sa.Update:
        """The fenced ``UPDATE`` of a checkpoint (the whole checkpoint on SQLite and MySQL without an entry)."""
        t = _t
        values: dict[str, typing.Any] = {"version": t.c.version + _ONE, "updated_at": self.now}
        if context:
            values["context"] = self.bind("context", t.c.context)
        if status:
            values["status"] = self.bind("status", t.c.status)
        if error:
            values["error"] = self.bind("error", t.c.error)
        if release:
            values.update(owner=_NULL, lease_expires_at=_NULL)
        else:
            values["lease_expires_at"] = self.expiry
        return sa.update(t).where(self.holds).values(**values)

    def checkpoint(
        self, entry: bool, context: bool, status: bool, error: bool, release: bool, outbox: bool = False
    ) -> typing.Any:
        """The checkpoint statement: on PostgreSQL one statement even with a log entry and outbox rows.

        Elsewhere this is the ``UPDATE``; the caller appends the entry (`append`) and inserts the
        outbox rows (``outbox.insert``) if it matched. Without outbox rows the statement is the same
        as ever (its cache key too): outbox rows cost nothing to a checkpoint that has none.
        """
        if outbox and self.postgres:
            return self._cached(
                ("checkpoint+outbox", entry, context, status, error, release),
                lambda: self.outbox.with_update(self.checkpoint_update(context, status, error, release), entry),
            )

        def build() -> typing.Any:
            update = self.checkpoint_update(context, status, error, release)
            return self._logged(update) if entry and self.postgres else update

        return self._cached(("checkpoint", entry and self.postgres, context, status, error, release), build)

    @staticmethod
    def entry_params(entry: StepEntry) -> dict[str, typing.Any]:
        """The parameters of a log entry (`append`, and the log row of a PostgreSQL checkpoint)."""
        return {
            "b_step_name": entry.step_name,
            "b_action": entry.action,
            "b_step_status": SagaStepStatus(entry.status).value,
            "b_details": entry.details,
            "b_response": entry.response,
        }

    def recoverable_candidates(self, names: bool, max_attempts: bool, exclude: bool) -> sa.Select[typing.Any]:
        """MySQL, a claim's first step: up to ``b_window`` candidate ids, oldest expiry first, read
        without locks (``FOR UPDATE SKIP LOCKED`` here would lock every candidate the sort reads,
        not just ``n``, and a concurrent claimer would find nothing)."""

        def build() -> sa.Select[typing.Any]:
            conditions = self._recoverable(names, max_attempts)
            if exclude:
                conditions.append(_t.c.id.not_in(_ids("exclude")))
            return (
                sa.select(_t.c.id).where(*conditions).order_by(*self._expiry_order()).limit(_integer("window"))
            )

        return typing.cast("sa.Select[typing.Any]", self._cached(("candidates", names, max_attempts, exclude), build))

    def lock_recoverable(self, names: bool, max_attempts: bool) -> sa.Select[typing.Any]:
        """MySQL, a claim's second step: lock those of ``b_ids`` still claimable, by primary key, skipping
        rows another transaction holds (the conditions are checked again on the latest row versions)."""

        def build() -> sa.Select[typing.Any]:
            return (
                sa.select(_t.c.id)
                .with_hint(_t, "FORCE INDEX (PRIMARY)")
                .where(_t.c.id.in_(_ids()), *self._recoverable(names, max_attempts))
                .with_for_update(skip_locked=True)
            )

        return typing.cast("sa.Select[typing.Any]", self._cached(("lock", names, max_attempts), build))

    def claim_ids(self) -> sa.Update:
        """MySQL, a claim's third step: take the locked sagas ``b_ids`` over."""
        return typing.cast(
            sa.Update,
            self._cached(
                ("claim_ids",), lambda: sa.update(_t).where(_t.c.id.in_(_ids())).values(**self._recovery_values())
            ),
        )

    def _recoverable(self, names: bool, max_attempts: bool) -> list[sa.ColumnElement[bool]]:
        conditions: list[sa.ColumnElement[bool]] = [RESUMABLE_CLAUSE, self.lease_free]
        if names:
            conditions.append(_t.c.name.in_(sa.bindparam("b_names", expanding=True)))
        if max_attempts:
            conditions.append(_t.c.recovery_attempts < _integer("max_attempts"))
        return conditions

    def _expiry_order(self) -> tuple[sa.ColumnElement[typing.Any], ...]:
        # As memory.py: a free lease (NULL) counts as expiring now, so older expiries go first.
        return sa.func.coalesce(_t.c.lease_expires_at, self.now), _t.c.created_at, _t.c.id

    def _recovery_values(self) -> dict[str, typing.Any]:
        t = _t
        return {
            "owner": self.bind("owner", t.c.owner),
            "lease_epoch": t.c.lease_epoch + _ONE,
            "lease_expires_at": self.expiry,
            "recovery_attempts": t.c.recovery_attempts + _ONE,
            "status": self.pending_to_running,
            "updated_at": self.now,
        }

    # -- operators ----------------------------------------------------------------------------------------

    def amend(
        self,
        entry: bool,
        context: bool,
        status: bool,
        error: bool,
        set_attempts: bool,
        add_attempts: bool,
        expected_version: bool,
        unleased: bool,
    ) -> typing.Any:
        """An operator's unfenced write: on PostgreSQL one statement even with a log entry (as `checkpoint`)."""

        def build() -> typing.Any:
            t = _t
            values: dict[str, typing.Any] = {"updated_at": self.now}
            if context or status:
                values["version"] = t.c.version + _ONE
            if context:
                values["context"] = self.bind("context", t.c.context)
            if status:
                values["status"] = self.bind("status", t.c.status)
            if error:
                values["error"] = self.bind("error", t.c.error)
            attempts: sa.ColumnElement[int] = _integer("attempts") if set_attempts else t.c.recovery_attempts
            if add_attempts:
                attempts = attempts + _integer("add_attempts")
            if set_attempts or add_attempts:
                values["recovery_attempts"] = attempts
            conditions = [t.c.id == self.bind("id", t.c.id)]
            if expected_version:
                conditions.append(t.c.version == self.bind("expected_version", t.c.version))
            if unleased:
                conditions.append(self.lease_free)
            update = sa.update(t).where(*conditions).values(**values)
            return self._logged(update) if entry and self.postgres else update

        key = (entry and self.postgres, context, status, error, set_attempts, add_attempts, expected_version, unleased)
        return self._cached(("amend", *key), build)

    def list_sagas(
        self,
        statuses: frozenset[SagaStatus] | None,
        name: bool,
        older: bool,
        correlation: bool,
        recoverable: bool,
        max_attempts: bool,
        idle: bool,
        after: bool,
    ) -> sa.Select[typing.Any]:
        """Records oldest first, by ``(created_at, id)``: ``after`` continues after a record in that order."""

        def build() -> sa.Select[typing.Any]:
            t = _t
            conditions: list[sa.ColumnElement[bool]] = []
            if statuses is not None:
                conditions.append(self._status_in(statuses))
            if name:
                conditions.append(t.c.name == self.bind("name", t.c.name))
            if older:
                conditions.append(t.c.created_at <= self.clock.shifted(-_seconds("older")))
            if correlation:
                conditions.append(t.c.correlation_id == self.bind("correlation_id", t.c.correlation_id))
            if recoverable:
                conditions += [RESUMABLE_CLAUSE, self.lease_free]
            if max_attempts:
                conditions.append(t.c.recovery_attempts < _integer("max_attempts"))
            if idle:
                conditions.append(t.c.updated_at <= self.clock.shifted(-_seconds("idle")))
            if after:
                # (created_at, id) > (:created, :id), spelled so that every database plans it.
                created = self.bind("after_created", t.c.created_at)
                conditions.append(
                    sa.or_(t.c.created_at > created,
                           sa.and_(t.c.created_at == created, t.c.id > self.bind("after_id", t.c.id)))
                )
            return (
                sa.select(*RECORD_COLUMNS)
                .where(*conditions)
                .order_by(t.c.created_at, t.c.id)
                .limit(_integer("limit"))
            )

        key = ("list", statuses, name, older, correlation, recoverable, max_attempts, idle, after)
        return typing.cast("sa.Select[typing.Any]", self._cached(key, build))

    @staticmethod
    def _status_in(statuses: frozenset[SagaStatus]) -> sa.ColumnElement[bool]:
        if not statuses:
            return sa.false()
        return _t.c.status.in_([literal(status.value) for status in sorted(statuses)])

    def purge(self, statuses: frozenset[SagaStatus]) -> tuple[typing.Any, ...]:
        """The statements that delete the oldest finished sagas, their log rows and their published outbox
        rows, in one transaction (their unpublished outbox rows stay to be published).

        PostgreSQL: one statement. SQLite: the log rows', the outbox rows', then the sagas' ``DELETE``.
        MySQL: the candidates (a plain read), those still purgeable locked by primary key (``SKIP
        LOCKED``), then the three ``DELETE`` by id.
        """

        def build() -> tuple[typing.Any, ...]:
            t, lg = _t, _l
            purgeable = [self._status_in(statuses), t.c.owner.is_(None)]
            doomed = (
                sa.select(t.c.id)
                .where(*purgeable, t.c.created_at <= self.clock.shifted(-_seconds("older")))
                .order_by(t.c.created_at, t.c.id)
                .limit(_integer("limit"))
            )
            if self.postgres:
                # One statement, one snapshot: the sagas picked (locked, skipping rows another
                # transaction holds) are the ones whose log rows go.
                picked = doomed.with_for_update(skip_locked=True).cte("doomed")
                logs = sa.delete(lg).where(lg.c.saga_id.in_(sa.select(picked.c.id))).cte("doomed_log")
                outbox = self.outbox.of_purged_sagas(sa.select(picked.c.id)).cte("doomed_outbox")
                return (sa.delete(t).where(t.c.id.in_(sa.select(picked.c.id))).add_cte(logs).add_cte(outbox),)
            if self.mysql:
                lock = (
                    sa.select(t.c.id).with_hint(t, "FORCE INDEX (PRIMARY)")
                    .where(t.c.id.in_(_ids()), *purgeable).with_for_update(skip_locked=True)
                )
                delete_log = sa.delete(lg).where(lg.c.saga_id.in_(_ids()))
                delete_outbox = self.outbox.of_purged_sagas(_ids())
                return doomed, lock, delete_log, delete_outbox, sa.delete(t).where(t.c.id.in_(_ids()))
            # SQLite: the first DELETE takes the write lock, so the later ones' subqueries pick the same sagas.
            return (
                sa.delete(lg).where(lg.c.saga_id.in_(doomed)),
                self.outbox.of_purged_sagas(doomed),
                sa.delete(t).where(t.c.id.in_(doomed)),
            )

        return typing.cast("tuple[typing.Any, ...]", self._cached(("purge", statuses), build))
