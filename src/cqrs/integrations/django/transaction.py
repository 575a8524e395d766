"""Starting a saga in the same database transaction as the Django ORM writes it belongs to.

`atomic_saga_start` INSERTs the mediator's start row of a saga through
Django's own connection, so it commits or rolls back with the
``transaction.atomic()`` block around it. The statement is the SQLAlchemy
storage's table (``saga_executions``) and clock compiled for the
connection's dialect, once per dialect, so the schema is defined in one
place; events the start carries go to the outbox table (``saga_outbox``)
the same way, in the same transaction. `start_saga_on_commit` defers the
whole start to the commit.
"""

from __future__ import annotations

import functools
import typing
import uuid

from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.db import transaction  # type: ignore[import-untyped]

from cqrs import correlation
from cqrs.integrations._loop import shared_loop_thread
from cqrs.integrations._requests import check_json
from cqrs.integrations._runtime import log_accepted
from cqrs.integrations.django import _runtime
from cqrs.saga import _serialization
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.models import NewSaga

if typing.TYPE_CHECKING:
    import sqlalchemy
    from sqlalchemy.engine import Dialect

    from cqrs.outbox.models import OutboxMessage

__all__ = [
    "atomic_saga_start",
    "create_saga_tables",
    "drop_saga_tables",
    "prepare_sqlite_connection",
    "start_saga_on_commit",
]


def _shared_alias(sagas: _runtime.DjangoSagas, using: str | None, what: str) -> str:
    settings = sagas.require()
    alias = using or settings.database
    if not settings.shares_database(alias):
        if settings.derived:
            raise ImproperlyConfigured(
                f"{what}(using={alias!r}): sagas live in DATABASES[{settings.database!r}] "
                "(CQRS_SAGA['DATABASE']), so only a transaction of that database can start one"
            )
        raise ImproperlyConfigured(
            f"{what}(using={alias!r}) needs the saga storage in that database, but "
            f"CQRS_SAGA['STORAGE_URL'] points elsewhere; drop STORAGE_URL (sagas then live in "
            f"DATABASES[{settings.database!r}]) or use start_saga_on_commit()"
        )
    return alias


def atomic_saga_start(
    saga_or_context: typing.Any,
    context: typing.Any = None,
    *,
    using: str | None = None,
    saga_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    events: typing.Sequence[object] = (),
) -> uuid.UUID:
    """Record a saga in the current transaction of database ``using``; run it after the commit.

    Call it inside ``transaction.atomic(using=...)`` next to the ORM writes the
    saga belongs to, as ``atomic_saga_start(OrderSaga, context)`` or
    ``atomic_saga_start(context)``::

        with transaction.atomic():
            order = Order.objects.create(...)
            saga_id = atomic_saga_start(OrderSaga, OrderContext(order_id=order.pk, ...))

    The saga row is the mediator's start row (`SagaMediator.new_saga`: its
    hooks, correlation id and trace context), with status ``pending``, no
    owner and a lease that has already expired, INSERTed through
    ``connections[using]``, so it commits or rolls back with everything
    else: on rollback no trace of the saga remains. On commit,
    ``transaction.on_commit`` hands the id to this process's saga runtime,
    which runs it through the mediator. If the process dies between the
    commit and the end of the run, ``manage.py saga_worker`` finishes it.
    With ``CQRS_SAGA["RUN_ON_COMMIT"] = False`` only workers run it.

    Timestamps come from the database's clock, as the storage's do.
    ``using`` defaults to ``CQRS_SAGA["DATABASE"]`` (``"default"``), and must be
    the database the saga storage uses. The saga class must be listed in
    ``CQRS_SAGA["SAGAS"]``. The correlation id defaults to the request's.
    Outside ``atomic()`` (autocommit) the row commits at once and the run starts
    immediately. ``events``: notification events written to the outbox in
    the same transaction (``CQRS_SAGA["OUTBOX"] = True``), published by a
    relay once it commits. Returns the saga id.
    """
    sagas = _runtime.current()
    settings = sagas.require()
    saga_type, context = sagas.saga_for(saga_or_context, context)
    alias = _shared_alias(sagas, using, "atomic_saga_start")
    data = _serialization.dump_context(context)
    check_json(data, status=422)
    row = sagas.mediator().new_saga(
        saga_type,
        data,
        saga_id or uuid.uuid4(),
        status=SagaStatus.PENDING,
        correlation_id=correlation.accept_correlation_id(correlation_id or correlation.get_correlation_id()),
        events=events,
    )
    connection = transaction.get_connection(alias)
    inserts = _inserts_for(connection)
    with connection.cursor() as cursor:
        cursor.execute(inserts.saga.sql, inserts.saga.parameters(_saga_values(row)))
        if row.outbox:
            cursor.executemany(
                inserts.outbox.sql, [inserts.outbox.parameters(_outbox_values(row, m)) for m in row.outbox]
            )
    log_accepted(row.saga_id, row.name, row.correlation_id)
    if settings.run_on_commit:
        transaction.on_commit(functools.partial(sagas.hand_off, row.saga_id), using=alias, robust=True)
    return row.saga_id


def start_saga_on_commit(
    saga_or_context: typing.Any,
    context: typing.Any = None,
    *,
    using: str | None = None,
    saga_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    events: typing.Sequence[object] = (),
) -> uuid.UUID:
    """Start a saga when the current transaction of ``using`` commits; nothing if it rolls back.

    The deferred form of `start_saga` for code inside ``transaction.atomic()``
    (the sagas may live in any storage, not only the Django database)::

        with transaction.atomic():
            order = Order.objects.create(...)
            saga_id = start_saga_on_commit(OrderSaga, OrderContext(order_id=order.pk, ...))

    The saga class and context are checked now (errors raise here); the saga
    is recorded and run through the runtime's mediator by
    ``transaction.on_commit``, exactly once per commit, with the id returned
    here and the correlation id current now. Unlike `atomic_saga_start`,
    the saga row is written after the commit: if the process dies in
    between, or the storage refuses the write (logged), the saga does not
    exist. Outside ``atomic()`` it starts at once. ``using`` defaults to
    ``CQRS_SAGA["DATABASE"]``. ``events`` go to the outbox with the saga's
    row, in the storage's commit that records it (``CQRS_SAGA["OUTBOX"] = True``).
    """
    sagas = _runtime.current()
    settings = sagas.require()
    saga_type, context = sagas.saga_for(saga_or_context, context)
    check_json(_serialization.dump_context(context), status=422)
    saga_id = saga_id or uuid.uuid4()
    cid = correlation.accept_correlation_id(correlation_id or correlation.get_correlation_id())
    runtime = sagas.require_runtime()
    if events and not runtime.config.outbox:
        raise ValueError('Events a saga\'s start carries go to the outbox: set CQRS_SAGA["OUTBOX"] = True')
    carried = tuple(events)

    def start() -> None:
        shared_loop_thread().loop.call_soon_threadsafe(runtime.start_soon, saga_type, context, saga_id, cid, carried)

    transaction.on_commit(start, using=using or settings.database, robust=True)
    return saga_id


# -- SQL from the SQLAlchemy schema ------------------------------------------------------------


def saga_tables() -> list[sqlalchemy.Table]:
    """The SQLAlchemy storage's tables (sagas, their logs, the outbox, the schema version), parents first.

    `ImproperlyConfigured` when SQLAlchemy is missing.
    """
    try:
        from cqrs.saga.storage.sqlalchemy._layout import ALL_TABLES
    except ImportError as error:
        raise ImproperlyConfigured(
            "Keeping sagas in the Django database needs SQLAlchemy and an async driver: "
            "pip install 'cqrs-saga[django,sqlite]' (or [django,postgres])"
        ) from error
    return list(ALL_TABLES)


def sqlalchemy_dialect(connection: typing.Any, *, paramstyle: str | None = "format") -> Dialect:
    """The SQLAlchemy dialect of a Django connection, rendering Django's ``%s`` placeholders.

    For PostgreSQL it is the dialect of the driver Django uses (psycopg or
    psycopg2), so bound values are adapted the way that driver expects.
    """
    vendor = connection.vendor
    dialect: Dialect
    if vendor == "sqlite":
        from sqlalchemy.dialects.sqlite import pysqlite

        dialect = pysqlite.dialect(paramstyle=paramstyle)
    elif vendor == "postgresql":
        if connection.Database.__name__.startswith("psycopg2"):
            from sqlalchemy.dialects.postgresql import psycopg2

            dialect = psycopg2.dialect(paramstyle=paramstyle)  # type: ignore[no-untyped-call]
        else:
            from sqlalchemy.dialects.postgresql import psycopg

            dialect = psycopg.dialect(paramstyle=paramstyle)  # type: ignore[no-untyped-call]
    else:
        raise ImproperlyConfigured(
            f"Sagas cannot be stored through a {vendor} connection; use SQLite or PostgreSQL"
        )
    return dialect


class _Insert:
    """An ``INSERT`` of one of the storage's tables, compiled for one dialect.

    ``given`` columns are parameters, run through the column types' bind
    processing (UUIDs, JSON and timestamps stored exactly as the storage
    stores them); ``fixed`` are the other values (the database's clock among
    them).
    """

    def __init__(
        self, dialect: Dialect, table: sqlalchemy.Table, given: typing.Sequence[str], fixed: dict[str, typing.Any]
    ) -> None:
        import sqlalchemy as sa

        compiled = (
            table.insert()
            .values({**{name: sa.bindparam(name, None, type_=table.c[name].type) for name in given}, **fixed})
            .compile(dialect=dialect)
        )
        self.sql = str(compiled)
        literals = compiled.construct_params()
        self._order = [
            (name, literals.get(name), compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup or ()
        ]

    def parameters(self, values: dict[str, typing.Any]) -> list[typing.Any]:
        """The statement's parameters, in order, for ``values`` (of the ``given`` columns)."""
        parameters = []
        for name, fixed, processor in self._order:
            value = values.get(name, fixed)
            parameters.append(processor(value) if processor is not None else value)
        return parameters


class _Inserts(typing.NamedTuple):
    saga: _Insert
    outbox: _Insert


def _make_inserts(dialect: Dialect) -> _Inserts:
    """A pending saga's row (no owner, a lease already expired, so a worker may take it up once it commits)
    and its outbox rows (pending, ordered by their autoincrementing ``seq``)."""
    from cqrs.saga.storage.sqlalchemy import database_now, saga_outbox

    now = database_now(dialect.name)
    saga = _Insert(
        dialect,
        saga_tables()[0],
        ("id", "name", "definition_version", "status", "context", "correlation_id", "trace_context"),
        {
            "version": 1, "owner": None, "lease_epoch": 0, "lease_expires_at": now, "recovery_attempts": 0,
            "error": None, "created_at": now, "updated_at": now,
        },
    )
    outbox = _Insert(
        dialect,
        saga_outbox,
        ("message_id", "saga_id", "topic", "name", "payload", "headers"),
        {"status": "pending", "attempts": 0, "created_at": now},
    )
    return _Inserts(saga, outbox)


def _saga_values(row: NewSaga) -> dict[str, typing.Any]:
    return {
        "id": row.saga_id,
        "name": row.name,
        "definition_version": row.definition_version,
        "status": row.status.value,
        "context": row.context,
        "correlation_id": row.correlation_id,
        "trace_context": row.trace_context,
    }


def _outbox_values(row: NewSaga, message: OutboxMessage) -> dict[str, typing.Any]:
    return {
        "message_id": message.message_id,
        "saga_id": row.saga_id,
        "topic": message.topic,
        "name": message.name,
        "payload": message.payload,
        "headers": message.headers,
    }


_inserts: dict[tuple[str, str], _Inserts] = {}


def _inserts_for(connection: typing.Any) -> _Inserts:
    key = (connection.vendor, connection.Database.__name__)
    inserts = _inserts.get(key)
    if inserts is None:
        inserts = _inserts[key] = _make_inserts(sqlalchemy_dialect(connection))
    return inserts


def _stores_sagas(connection: typing.Any) -> bool:
    sagas = _runtime.current_or_none()
    if sagas is None or sagas.settings is None:
        return False
    return sagas.settings.shares_database(connection.alias)


def prepare_sqlite_connection(sender: typing.Any = None, *, connection: typing.Any, **kwargs: typing.Any) -> None:
    """``connection_created`` receiver: put a SQLite database that holds sagas in WAL mode.

    Django's connection and the saga storage's (aiosqlite) write the same file.
    In SQLite's default rollback-journal mode a reader blocks a committing
    writer, and a reader that then wants to write while another connection
    commits gets "database is locked" at once (SQLite refuses to wait, to avoid
    a deadlock). In WAL mode readers never block the writer, and writers wait
    for each other (busy timeout). The storage switches its own connections to
    WAL too, but cannot while a Django transaction holds the write lock (for
    instance when its first connection opens inside ``transaction.atomic()``),
    so the switch is made here, when Django connects, outside any transaction.
    WAL is a property of the database file: it lasts.
    """
    if connection.vendor != "sqlite" or not _stores_sagas(connection):
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        row = cursor.fetchone()
        if row and str(row[0]).lower() in ("wal", "memory"):
            return
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        except Exception as error:  # another connection holds a lock: the storage retries on connect
            _runtime.logger.warning("Could not switch %s to WAL journal mode: %s", connection.alias, error)


def create_saga_tables(apps: typing.Any, schema_editor: typing.Any) -> None:
    """Migration step: create the saga tables in the database the sagas live in (if not there yet)."""
    connection = schema_editor.connection
    if not _stores_sagas(connection):
        return
    from sqlalchemy.schema import CreateIndex, CreateTable

    dialect = sqlalchemy_dialect(connection, paramstyle=None)
    for table in saga_tables():
        schema_editor.execute(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)), None)
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            schema_editor.execute(str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)), None)


def upgrade_saga_tables(apps: typing.Any, schema_editor: typing.Any) -> None:
    """Migration step: bring saga tables an earlier migration created to the current schema.

    Creates what is missing (the outbox table, the schema-version table, indexes), adds
    ``saga_executions.trace_context`` if it is not there, and records the schema version. (Tables of
    the very first schema also keep a recovery index and a foreign key that cost speed only;
    ``cqrs-saga db upgrade`` drops them.)
    """
    connection = schema_editor.connection
    if not _stores_sagas(connection):
        return

    from cqrs.saga.storage.sqlalchemy._layout import COMPONENT
    from cqrs.saga.storage.sqlalchemy._schema import SCHEMA_VERSION, database_now, saga_executions, saga_schema

    create_saga_tables(apps, schema_editor)
    dialect = sqlalchemy_dialect(connection, paramstyle=None)
    with connection.cursor() as cursor:
        columns = {c.name for c in connection.introspection.get_table_description(cursor, saga_executions.name)}
        if "trace_context" not in columns:
            kind = saga_executions.c.trace_context.type.compile(dialect=dialect)
            schema_editor.execute(f"ALTER TABLE {saga_executions.name} ADD COLUMN trace_context {kind}", None)
        cursor.execute(f"SELECT version FROM {saga_schema.name} WHERE component = %s", [COMPONENT])
        found = cursor.fetchone()
    # The database's own clock, as the storage writes it (SQL text: a function call, no parameters).
    now = str(database_now(dialect.name).compile(dialect=dialect))
    if found is None:
        schema_editor.execute(
            f"INSERT INTO {saga_schema.name} (component, version, updated_at) VALUES (%s, %s, {now})",
            [COMPONENT, SCHEMA_VERSION],
        )
    elif found[0] != SCHEMA_VERSION:
        schema_editor.execute(
            f"UPDATE {saga_schema.name} SET version = %s, updated_at = {now} WHERE component = %s",
            [SCHEMA_VERSION, COMPONENT],
        )


def drop_saga_tables(apps: typing.Any, schema_editor: typing.Any) -> None:
    """Migration step (reverse): drop the saga tables."""
    connection = schema_editor.connection
    if not _stores_sagas(connection):
        return
    from sqlalchemy.schema import DropTable

    dialect = sqlalchemy_dialect(connection, paramstyle=None)
    for table in reversed(saga_tables()):
        schema_editor.execute(str(DropTable(table, if_exists=True).compile(dialect=dialect)), None)
