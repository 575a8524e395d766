"""`SqlAlchemySagaStorage`: the storage protocols on SQLAlchemy Core.

(Over 500 lines: one class with the methods of four protocols, each a few lines of dispatch; the statements,
transactions, executors, outbox, log batches and group commit it dispatches to are modules of their own.)

Round trips per engine write (after a pooled connection has prepared the
statement once; asyncpg keeps prepared statements per connection):

- PostgreSQL: every write is one statement on a connection outside any
  transaction (``AUTOCOMMIT``, or the asyncpg fast path), so no
  ``BEGIN``/``COMMIT`` is sent: `start_saga` is one round trip (``INSERT ...
  ON CONFLICT DO NOTHING``), a `checkpoint` is one round trip (``WITH u AS
  (UPDATE ... RETURNING id) INSERT INTO saga_log ... SELECT ... FROM u``, or
  just the ``UPDATE`` without a log entry; outbox messages join it, inserted
  ``FROM u``: see `_outbox`), and so are `renew_lease`,
  `release_lease` and `amend_saga`. `claim_recoverable` is two statements a
  pass (the claim, then every claimed saga's history), `claim_saga` two (the
  claim, then the history), three when the lease is not granted.
- SQLite: `start_saga` is the ``INSERT`` (autocommit); a `checkpoint` is
  ``BEGIN IMMEDIATE``, ``UPDATE``, ``INSERT`` (only if the update matched)
  and ``COMMIT`` (SQLite has no data-modifying CTEs), in one call to the
  fast path's writer thread (`_executors._sqlite`); through SQLAlchemy the
  ``BEGIN`` is issued by the sqlite3 module with the first write.
- MySQL/MariaDB: `start_saga` is the ``INSERT`` and a ``COMMIT``; a
  `checkpoint` is ``UPDATE``, ``INSERT`` (only if it matched) and ``COMMIT``.
  Claims are a transaction of a few statements (`_claims`). The MySQL
  dialects count matched rows, not changed ones (``CLIENT.FOUND_ROWS``), which
  the fenced writes rely on: the storage refuses a dialect that cannot.

SQLite concurrency: every write transaction starts with its write statement,
so it takes the database's write lock at once, and `claim_recoverable` is one
``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING``: two processes can
never both claim a saga, without ``BEGIN IMMEDIATE``. Engines made by
`from_url` set a busy timeout (30 s), WAL journal mode and foreign keys on
every connection, and ``synchronous`` (FULL, or NORMAL with
``?synchronous=normal`` in the URL: see docs/storage.md); for an engine you
make yourself, set a busy timeout.
"""

from __future__ import annotations

import datetime
import typing
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cqrs.outbox.models import OutboxMessage
from cqrs.saga.exceptions import SagaNotFoundError
from cqrs.saga.storage.compat import PythonCqrsStorageMethods
from cqrs.saga.storage.enums import SagaStatus, purge_filter, status_set
from cqrs.saga.storage.models import Lease, NewSaga, SagaClaim, SagaLogEntry, SagaRecord, StepEntry
from cqrs.saga.storage.sqlalchemy import _log_batch, _transactions, _upgrade
from cqrs.saga.storage.sqlalchemy._claims import Claims
from cqrs.saga.storage.sqlalchemy._engines import SessionOrFactory, create_engine, engine_of
from cqrs.saga.storage.sqlalchemy._executors import Executor, make_executor
from cqrs.saga.storage.sqlalchemy._group_commit import GroupCommit
from cqrs.saga.storage.sqlalchemy._layout import SchemaReport, inspect_schema
from cqrs.saga.storage.sqlalchemy._outbox import SqlOutboxMethods, outbox_json_rows, outbox_rows
from cqrs.saga.storage.sqlalchemy._schema import family, log_entry, record
from cqrs.saga.storage.sqlalchemy._statements import Statements

if typing.TYPE_CHECKING:
    from cqrs.outbox.protocol import OutboxStorage
    from cqrs.saga.storage.protocol import SagaStorage, StatusFilter

__all__ = ["SqlAlchemySagaStorage"]

JsonDict = dict[str, typing.Any]
T = typing.TypeVar("T")
_UTC = datetime.timezone.utc
_MYSQL_DUPLICATE_KEY = 1062
_EARLIEST = datetime.datetime.min.replace(tzinfo=_UTC)


class SqlAlchemySagaStorage(SqlOutboxMethods, PythonCqrsStorageMethods):
    """Sagas in ``saga_executions`` and ``saga_log`` (and their outbox in ``saga_outbox``), through SQLAlchemy Core.

    ``SqlAlchemySagaStorage(async_sessionmaker(engine))`` (preferred), or an
    ``AsyncSession`` (its engine is used; the storage never adds to the
    session's own transaction, so committing that session is harmless), or
    an ``AsyncEngine``. `from_url` makes the engine itself, and `close`
    disposes only an engine the storage made. PostgreSQL (asyncpg), SQLite
    (aiosqlite) and MySQL/MariaDB (asyncmy or aiomysql).

    ``fast_path``: on PostgreSQL through asyncpg, single-statement writes run
    on the asyncpg connection itself; on a SQLite file, every write
    transaction is one call to a writer thread with a ``sqlite3`` connection
    of the storage's own. Both skip SQLAlchemy's statement execution
    (SQLAlchemy's statement events and ``echo`` do not see them). None (the
    default) uses it wherever it can (asyncpg, or SQLite through an engine
    `from_url` made; no ``schema_translate_map``), True asks for it (a
    warning says why when it cannot be used), False sends every write
    through SQLAlchemy. Whether it is on is decided here, logged once per
    engine, and shown by `fast_path`.

    ``group_commit`` (PostgreSQL only, else ``ValueError``): checkpoints of
    concurrent sagas share commits; each `checkpoint` returns once the batch
    holding it committed, with its own outcome. It pays with many concurrent
    sagas, not with one at a time (see `_group_commit` and the performance guide).
    """

    def __init__(
        self, session_or_factory: SessionOrFactory, *, fast_path: bool | None = None, group_commit: bool = False
    ) -> None:
        self._source = session_or_factory
        self._session: AsyncSession | None = (
            session_or_factory if isinstance(session_or_factory, AsyncSession) else None
        )
        self._made_session = False
        self._owns_engine = False
        self.engine: AsyncEngine = engine_of(session_or_factory)
        dialect = self.engine.dialect
        if family(dialect.name) not in ("postgresql", "sqlite", "mysql"):
            raise ValueError(
                f"SqlAlchemySagaStorage supports PostgreSQL, SQLite, MySQL and MariaDB, not {dialect.name}"
            )
        if family(dialect.name) == "mysql" and not dialect.supports_sane_rowcount:
            raise ValueError(
                f"The {dialect.name}+{dialect.driver} dialect does not count matched rows (CLIENT.FOUND_ROWS), "
                "which the storage's fenced writes rely on; use asyncmy or aiomysql"
            )
        self._sql = Statements(dialect.name)
        self._executor: Executor = make_executor(self.engine, self._sql.json_params, fast_path)
        self._entries_statements: dict[tuple[bool, ...], typing.Any] = {}
        self._group: GroupCommit | None = None
        if group_commit:
            if not self._sql.postgres:
                raise ValueError(f"group_commit=True needs PostgreSQL; this storage is on {dialect.name}")
            self._group = GroupCommit(self.engine, self._executor)
        self._claims = Claims(self._executor, self._sql)

    @classmethod
    def from_url(
        cls, url: str | sa.URL, *, fast_path: bool | None = None, group_commit: bool = False, **engine_kwargs: object
    ) -> SqlAlchemySagaStorage:
        """A storage on a new engine for ``url`` (``postgresql+asyncpg://...``, ``sqlite+aiosqlite:///...``,
        ``mysql+asyncmy://...``). A SQLite URL may end in ``?synchronous=normal`` (default ``full``; see
        docs/storage.md for what each promises).

        ``engine_kwargs`` go to ``create_async_engine`` (``pool_size``, ``echo``, ...).
        """
        engine = create_engine(url, **engine_kwargs)
        factory = async_sessionmaker(engine, expire_on_commit=False)
        storage = cls(factory, fast_path=fast_path, group_commit=group_commit)
        storage._owns_engine = True
        return storage

    @property
    def fast_path(self) -> bool:
        """Whether writes skip SQLAlchemy: the asyncpg or SQLite fast path (see the class doc)."""
        return self._executor.fast_path

    @property
    def group_commit(self) -> bool:
        """Whether checkpoints of concurrent sagas share commits (see the class doc)."""
        return self._group is not None

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
        """Create the saga tables and indexes that do not exist yet, and record the schema version.

        Raises `SchemaError`, before writing anything, when tables of these
        names hold something else: another library's (python-cqrs's
        ``saga_executions``, say), or an earlier or later schema version of
        this one's (`upgrade_schema` upgrades an earlier one).
        """
        await self._ddl(lambda conn: _upgrade.create(conn, self._display_url()))

    async def check_schema(self) -> SchemaReport:
        """What the database holds: the schema version, whose tables, and any drift (reads only)."""
        return await self._executor.transaction(inspect_schema)

    async def upgrade_schema(self) -> tuple[SchemaReport, SchemaReport]:
        """Upgrade the saga tables of any earlier schema version to this one (creating them if absent).

        Returns the reports before and after. Raises `SchemaError` for foreign
        tables or a newer version, before writing anything.
        """
        return await self._ddl(_upgrade.upgrade)

    async def _ddl(self, work: typing.Callable[[sa.Connection], T]) -> T:
        kind = self._sql.family

        def locked(conn: sa.Connection) -> T:
            # Several processes may start at once: one creates the tables, the others wait and find them.
            if kind == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x5A6A_7AB1E5)))
            elif kind == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.execute(sa.text("SELECT GET_LOCK('cqrs_saga_tables', 60)"))
            try:
                return work(conn)
            finally:
                if kind == "mysql":  # a session lock: it would outlive the transaction
                    conn.execute(sa.text("SELECT RELEASE_LOCK('cqrs_saga_tables')"))

        return await self._executor.transaction(locked)

    def _display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    async def close(self) -> None:
        """Write the checkpoints queued for group commit, close the session the storage made and dispose the
        engine if `from_url` made it."""
        if self._group is not None:
            await self._group.close()
        await self._executor.close()
        if self._made_session and self._session is not None:
            session, self._session, self._made_session = self._session, None, False
            await session.close()
        if self._owns_engine:
            await self.engine.dispose()

    async def __aenter__(self) -> SqlAlchemySagaStorage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- engine --------------------------------------------------------------------------------------

    async def start_saga(self, saga: NewSaga, owner: str, lease_seconds: float) -> Lease | None:
        """Insert ``saga`` leased to ``owner`` (epoch 1) with its outbox rows, in one commit; None if its id is
        taken (and then no outbox row is written). With group commit, that commit is the batch's."""
        if self._group is not None and not saga.outbox:
            return await self._group.start(self._start_alone, saga, owner, lease_seconds)
        return await self._start_alone(saga, owner, lease_seconds)

    async def _start_alone(self, saga: NewSaga, owner: str, lease_seconds: float) -> Lease | None:
        params = {
            "b_id": saga.saga_id,
            "b_name": saga.name,
            "b_definition_version": saga.definition_version,
            "b_status": SagaStatus(saga.status).value,
            "b_context": saga.context,
            "b_correlation_id": saga.correlation_id,
            "b_trace_context": saga.trace_context,
            "b_owner": owner,
            "b_lease_seconds": lease_seconds,
        }
        if saga.outbox:
            return Lease(owner=owner, epoch=1) if await self._start_with_outbox(saga, params) else None
        try:
            # INSERT ... ON CONFLICT (id) DO NOTHING: its rowcount tells whether the id was free.
            inserted = await self._executor.write(self._sql.start, params)
        except sa.exc.IntegrityError as error:
            # MySQL: a plain INSERT, whose duplicate key says the same.
            if self._sql.mysql and getattr(error.orig, "args", ())[:1] == (_MYSQL_DUPLICATE_KEY,):
                return None
            raise
        return Lease(owner=owner, epoch=1) if inserted == 1 else None

    async def claim_saga(self, saga_id: uuid.UUID, owner: str, lease_seconds: float) -> SagaClaim | None:
        """Take the lease of a resumable saga whose lease is free, expired or ``owner``'s; the claim carries
        the record and history either way (None for an unknown saga)."""
        return await self._claims.claim_saga(saga_id, owner, lease_seconds)

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
        outbox: typing.Sequence[OutboxMessage] = (),
        entries: typing.Sequence[StepEntry] = (),
    ) -> bool:
        """Append ``entry`` then ``entries``, store ``context``, ``status`` and ``error``, renew (or release)
        the lease and insert the ``outbox`` rows, in one commit; False, and nothing written, if ``lease`` is no
        longer the saga's. With group commit, that commit is the batch's."""
        args = (saga_id, lease, entry, context, status, error, lease_seconds, release, outbox, entries)
        if self._group is not None:
            return await self._group.checkpoint(self._checkpoint_alone, *args)
        return await self._checkpoint_alone(*args)

    async def _checkpoint_alone(
        self, saga_id: uuid.UUID, lease: Lease, entry: StepEntry | None, context: JsonDict | None,
        status: SagaStatus | None, error: str | None, lease_seconds: float, release: bool,
        outbox: typing.Sequence[OutboxMessage], entries: typing.Sequence[StepEntry],
    ) -> bool:
        # PostgreSQL: one autocommitted statement; the log row exists only if the fenced update matched.
        # SQLite and MySQL: UPDATE, then INSERT only if it matched, then COMMIT.
        params: dict[str, typing.Any] = {"b_id": saga_id, "b_owner": lease.owner, "b_epoch": lease.epoch}
        if not release:
            params["b_lease_seconds"] = lease_seconds
        if context is not None:
            params["b_context"] = context
        if status is not None:
            params["b_status"] = SagaStatus(status).value
        if error is not None:
            params["b_error"] = error
        if entries:
            return await self._checkpoint_entries(
                params, saga_id, [entry, *entries] if entry is not None else entries, outbox,
                context is not None, status is not None, error is not None, release,
            )
        if outbox:
            statement = self._sql.checkpoint(
                entry is not None, context is not None, status is not None, error is not None, release, outbox=True
            )
            return await self._checkpoint_with_outbox(statement, params, saga_id, entry, outbox)
        statement = self._sql.checkpoint(
            entry is not None, context is not None, status is not None, error is not None, release
        )
        return await self._write_with_entry(statement, params, saga_id, entry)

    async def renew_lease(self, saga_id: uuid.UUID, lease: Lease, lease_seconds: float) -> bool:
        """Push the lease expiry ``lease_seconds`` past the database's now; False if the lease was lost."""
        params = {"b_id": saga_id, "b_owner": lease.owner, "b_epoch": lease.epoch, "b_lease_seconds": lease_seconds}
        return await self._executor.write(self._sql.renew, params) == 1

    async def release_lease(self, saga_id: uuid.UUID, lease: Lease) -> bool:
        """Give the lease up, so another runner may claim the saga at once; False if it was lost already."""
        params = {"b_id": saga_id, "b_owner": lease.owner, "b_epoch": lease.epoch}
        return await self._executor.write(self._sql.release, params) == 1

    async def claim_recoverable(
        self,
        owner: str,
        lease_seconds: float,
        *,
        limit: int,
        names: typing.Collection[str] | None = None,
        max_attempts: int | None = None,
    ) -> list[SagaClaim]:
        """Claim up to ``limit`` resumable sagas whose lease is free or expired (oldest expiry first), each
        with its history; their epoch and recovery attempts grow by one."""
        return await self._claims.claim_recoverable(
            owner, lease_seconds, limit=limit, names=names, max_attempts=max_attempts
        )

    # -- operators --------------------------------------------------------------------------------------

    async def get_saga(self, saga_id: uuid.UUID) -> SagaRecord | None:
        """The stored saga, or None."""
        rows = await self._executor.read(self._sql.get, {"b_id": saga_id})
        return record(rows[0]) if rows else None

    async def get_history(self, saga_id: uuid.UUID) -> list[SagaLogEntry] | None:
        """The saga's step history in write order (``seq``); None for an unknown saga."""
        # One read: no row for an unknown saga, one row of NULLs for an empty history.
        rows = await self._executor.read(self._sql.history_or_missing, {"b_id": saga_id})
        if not rows:
            return None
        return [log_entry(row) for row in rows if row[-1] is not None]

    async def list_sagas(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        older_than: datetime.timedelta | None = None,
        correlation_id: str | None = None,
        recoverable: bool = False,
        max_recovery_attempts: int | None = None,
        idle_for: datetime.timedelta | None = None,
        after: SagaRecord | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        """Sagas oldest first (by ``created_at``, then id), filtered; see `SagaOperatorStorage.list_sagas`."""
        params: dict[str, typing.Any] = {"b_limit": max(limit, 0)}
        if name is not None:
            params["b_name"] = name
        if older_than is not None:
            params["b_older"] = older_than.total_seconds()
        if correlation_id is not None:
            params["b_correlation_id"] = correlation_id
        if max_recovery_attempts is not None:
            params["b_max_attempts"] = max_recovery_attempts
        if idle_for is not None:
            params["b_idle"] = idle_for.total_seconds()
        if after is not None:
            params["b_after_created"] = after.created_at or _EARLIEST
            params["b_after_id"] = after.saga_id
        statement = self._sql.list_sagas(
            status_set(status),
            name is not None,
            older_than is not None,
            correlation_id is not None,
            recoverable,
            max_recovery_attempts is not None,
            idle_for is not None,
            after is not None,
        )
        return [record(row) for row in await self._executor.read(statement, params)]

    async def amend_saga(
        self,
        saga_id: uuid.UUID,
        *,
        context: JsonDict | None = None,
        status: SagaStatus | None = None,
        error: str | None = None,
        entry: StepEntry | None = None,
        recovery_attempts: int | None = None,
        add_recovery_attempts: int = 0,
        expected_version: int | None = None,
        unleased: bool = False,
    ) -> bool:
        """An operator's write in one commit, not fenced by a lease; see `SagaOperatorStorage.amend_saga`."""
        params: dict[str, typing.Any] = {"b_id": saga_id}
        if context is not None:
            params["b_context"] = context
        if status is not None:
            params["b_status"] = SagaStatus(status).value
        if error is not None:
            params["b_error"] = error
        if recovery_attempts is not None:
            params["b_attempts"] = recovery_attempts
        if add_recovery_attempts:
            params["b_add_attempts"] = add_recovery_attempts
        if expected_version is not None:
            params["b_expected_version"] = expected_version
        statement = self._sql.amend(
            entry is not None,
            context is not None,
            status is not None,
            error is not None,
            recovery_attempts is not None,
            bool(add_recovery_attempts),
            expected_version is not None,
            unleased,
        )
        return await self._write_with_entry(statement, params, saga_id, entry)

    async def park_saga(self, saga_id: uuid.UUID, reason: str) -> None:
        """Take the saga out of every path (``parked``, ``reason`` as its error, lease freed)."""
        if await self._executor.write(self._sql.park, {"b_id": saga_id, "b_error": reason}) != 1:
            raise SagaNotFoundError(saga_id)

    async def reset_saga(self, saga_id: uuid.UUID) -> None:
        """Make a parked or stuck saga recoverable: ``compensating`` if its log shows a failure or a
        compensation, else ``running``; attempts at zero, no lease."""
        # One UPDATE: the status comes from an EXISTS over the saga's log (compensation started?).
        if await self._executor.write(self._sql.reset, {"b_id": saga_id}) != 1:
            raise SagaNotFoundError(saga_id)

    async def purge_sagas(
        self,
        *,
        older_than: datetime.timedelta,
        status: SagaStatus | None = None,
        limit: int = 1000,
    ) -> int:
        """Delete up to ``limit`` finished sagas created more than ``older_than`` ago, oldest first,
        with their step logs and their published outbox rows; returns how many sagas were deleted.

        Without ``status``: ``completed`` and ``failed`` sagas. ``status=SagaStatus.PARKED``
        deletes parked ones; an unfinished status or a negative age raises ``ValueError``. A saga
        with an owner is never deleted. Call it in a loop until it returns less than ``limit`` to
        purge a large backlog in short transactions.
        """
        sql = self._sql
        statements = sql.purge(purge_filter(older_than, status))
        params = {"b_older": older_than.total_seconds(), "b_limit": max(limit, 0)}
        if sql.postgres:
            return await self._executor.write(statements[0], params)
        return await self._executor.transaction(lambda conn: _transactions.purge(conn, sql, statements, params))

    # -- helpers ------------------------------------------------------------------------------------------

    async def _checkpoint_entries(
        self, params: dict[str, typing.Any], saga_id: uuid.UUID, entries: typing.Sequence[StepEntry],
        messages: typing.Sequence[OutboxMessage], context: bool, status: bool, error: bool, release: bool,
    ) -> bool:
        """A checkpoint with several log rows (`_log_batch`): one statement on PostgreSQL, else the update and
        the rows (and the outbox rows) in one transaction."""
        sql = self._sql
        key = (bool(messages), context, status, error, release)
        statement = self._entries_statements.get(key)
        if statement is None:
            update = sql.checkpoint_update(context, status, error, release)
            statement = self._entries_statements[key] = (
                _log_batch.logged_entries(sql, update, bool(messages)) if sql.postgres else update
            )
        if sql.postgres:
            params["b_entries"] = _log_batch.entries_json(entries)
            if messages:
                params["b_outbox"] = outbox_json_rows(messages)
            return await self._executor.write(statement, params) > 0
        then: list[tuple[typing.Any, typing.Any]] = [(sql.append, _log_batch.entries_rows(sql, saga_id, entries))]
        if messages:
            then.append((sql.outbox.insert, outbox_rows(saga_id, messages)))
        return await self._executor.write_then(statement, params, then)

    async def _write_with_entry(
        self, statement: typing.Any, params: dict[str, typing.Any], saga_id: uuid.UUID, entry: StepEntry | None
    ) -> bool:
        """A conditional write with an optional log entry: one statement on PostgreSQL (``statement``
        holds the entry), else ``statement`` then the entry only if it matched, in one transaction."""
        if entry is not None:
            entry_params = self._sql.entry_params(entry)
            if not self._sql.postgres:
                log_params = {"b_id": saga_id, **entry_params}
                return await self._executor.write_then(statement, params, [(self._sql.append, log_params)])
            params.update(entry_params)
        return await self._executor.write(statement, params) == 1


if typing.TYPE_CHECKING:

    def _implements_the_protocol(storage: SqlAlchemySagaStorage) -> SagaStorage:
        return storage

    def _implements_the_outbox(storage: SqlAlchemySagaStorage) -> OutboxStorage:
        return storage
