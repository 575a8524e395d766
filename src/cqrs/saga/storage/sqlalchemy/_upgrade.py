"""Creating the saga tables, and upgrading every earlier schema version of them to the current one.

Both run on a synchronous ``sqlalchemy.Connection`` inside a transaction: the
storage's (`SqlAlchemySagaStorage.create_tables`, `upgrade_schema`, the
``cqrs-saga db`` commands) or Alembic's (the revision shipped in
``cqrs.saga.storage.sqlalchemy:migrations``), so there is one upgrade path.
On PostgreSQL and SQLite the DDL is transactional: a failed upgrade leaves
the tables as they were. MySQL and MariaDB commit each DDL statement, and
every step checks what is there first, so an interrupted upgrade can be run
again.

The steps, from what `inspect_schema` says:

- 1 to 2: drop the index ``ix_saga_executions_recovery`` and the foreign key
  of ``saga_log.saga_id`` (SQLite cannot drop a foreign key: ``saga_log`` is
  rebuilt, its rows copied with their ``seq``).
- 2 to 3: add the nullable ``saga_executions.trace_context``.
- 3 to 4: create ``saga_outbox`` (with the tables that are missing, below).
- then: create what is missing (``cqrs_saga_schema``, an index) and record
  the version. Columns that are not this project's are left alone.
"""

from __future__ import annotations

import sqlalchemy as sa

from cqrs.saga.storage.sqlalchemy._layout import (
    ALL_TABLES,
    COMPONENT,
    LEGACY_INDEX,
    SchemaReport,
    inspect_schema,
    refusal,
)
from cqrs.saga.storage.sqlalchemy._schema import (
    SCHEMA_VERSION,
    Base,
    database_now,
    family,
    saga_executions,
    saga_log,
    saga_schema,
)

__all__ = ["create", "upgrade"]


def create(conn: sa.Connection, url: str | None = None) -> SchemaReport:
    """Create the tables and indexes that are missing and record the version; refuse foreign or older tables.

    Raises `SchemaError` (before writing anything) when the tables of these
    names are not this project's, or are of another version.
    """
    report = inspect_schema(conn)
    error = refusal(report, url)
    if error is not None:
        raise error
    Base.metadata.create_all(conn, tables=ALL_TABLES)
    _record(conn, report.recorded)
    return inspect_schema(conn)


def upgrade(conn: sa.Connection) -> tuple[SchemaReport, SchemaReport]:
    """Bring the saga tables to `SCHEMA_VERSION` (creating them if there are none); returns before and after.

    Raises `SchemaError` for foreign tables or a newer version, before writing.
    """
    before = inspect_schema(conn)
    if before.state in ("foreign", "newer"):
        error = refusal(before)
        assert error is not None
        raise error
    if before.state != "empty":
        # Each step looks before it writes: a partly upgraded database (MySQL commits DDL one
        # statement at a time) is finished, not failed.
        _drop_legacy_index(conn)
        _drop_log_foreign_key(conn)
        _add_trace_context(conn)
    Base.metadata.create_all(conn, tables=ALL_TABLES)
    _create_missing_indexes(conn)
    _record(conn, before.recorded)
    return before, inspect_schema(conn)


def _record(conn: sa.Connection, recorded: int | None) -> None:
    now = database_now(conn.dialect.name)
    if recorded is None:
        conn.execute(sa.insert(saga_schema).values(component=COMPONENT, version=SCHEMA_VERSION, updated_at=now))
    elif recorded != SCHEMA_VERSION:
        conn.execute(
            sa.update(saga_schema)
            .where(saga_schema.c.component == COMPONENT)
            .values(version=SCHEMA_VERSION, updated_at=now)
        )


def _create_missing_indexes(conn: sa.Connection) -> None:
    inspector = sa.inspect(conn)
    for table in ALL_TABLES:
        existing = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in existing:
                index.create(conn)


def _drop_legacy_index(conn: sa.Connection) -> None:
    indexes = sa.inspect(conn).get_indexes(saga_executions.name)
    if not any(index["name"] == LEGACY_INDEX for index in indexes):
        return
    if family(conn.dialect.name) == "mysql":
        conn.exec_driver_sql(f"DROP INDEX {LEGACY_INDEX} ON {saga_executions.name}")
    else:
        conn.exec_driver_sql(f"DROP INDEX {LEGACY_INDEX}")


def _drop_log_foreign_key(conn: sa.Connection) -> None:
    keys = sa.inspect(conn).get_foreign_keys(saga_log.name)
    if not keys:
        return
    kind = family(conn.dialect.name)
    if kind == "sqlite":
        _rebuild_sqlite_log(conn)
        return
    for key in keys:
        if kind == "mysql":
            conn.exec_driver_sql(f"ALTER TABLE {saga_log.name} DROP FOREIGN KEY {key['name']}")
        else:
            conn.exec_driver_sql(f'ALTER TABLE {saga_log.name} DROP CONSTRAINT "{key["name"]}"')


def _rebuild_sqlite_log(conn: sa.Connection) -> None:
    """SQLite: ``saga_log`` again, without the foreign key, rows and ``seq`` kept."""
    scratch = sa.MetaData()
    rebuilt = saga_log.to_metadata(scratch, name="saga_log__upgrade")
    rebuilt.indexes.clear()
    rebuilt.create(conn)
    names = ", ".join(c.name for c in saga_log.columns)
    conn.exec_driver_sql(f"INSERT INTO saga_log__upgrade ({names}) SELECT {names} FROM {saga_log.name}")
    conn.exec_driver_sql(f"DROP TABLE {saga_log.name}")
    conn.exec_driver_sql(f"ALTER TABLE saga_log__upgrade RENAME TO {saga_log.name}")
    for index in saga_log.indexes:
        index.create(conn)


def _add_trace_context(conn: sa.Connection) -> None:
    columns = {c["name"] for c in sa.inspect(conn).get_columns(saga_executions.name)}
    if "trace_context" in columns:
        return
    column_type = saga_executions.c.trace_context.type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {saga_executions.name} ADD COLUMN trace_context {column_type} NULL")
