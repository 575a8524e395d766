"""What a database holds under the saga tables' names: which schema version, whose tables, what drifted.

Schema versions of this project (`SCHEMA_VERSION` is the one this code writes):

1. The first release: ``saga_executions`` and ``saga_log``, with a partial
   index ``ix_saga_executions_recovery (status, lease_expires_at)`` and a
   foreign key from ``saga_log.saga_id`` to ``saga_executions.id`` (PostgreSQL
   and SQLite only: MySQL and MariaDB came with version 2).
2. Without that index and that foreign key (every step checkpoint became a
   HOT update on PostgreSQL).
3. ``saga_executions.trace_context`` (nullable JSON), and the version
   recorded in ``cqrs_saga_schema``.
4. ``saga_outbox``, the transactional outbox (`cqrs.outbox`).

A database written before versions were recorded is told apart by its tables:
``saga_outbox`` means 4, ``trace_context`` 3, the recovery index or the
foreign key 1, otherwise 2. Tables of the same names without this project's columns (such as
python-cqrs's ``saga_executions``, which comes with ``saga_logs``) are
foreign: nothing here ever writes to them.

Everything here runs on a synchronous ``sqlalchemy.Connection`` (inside the
storage's transaction, or Alembic's ``op.get_bind()``).
"""

from __future__ import annotations

import dataclasses
import typing

import sqlalchemy as sa

from cqrs.saga.storage.sqlalchemy._outbox_schema import saga_outbox
from cqrs.saga.storage.sqlalchemy._schema import SCHEMA_VERSION, TABLES, saga_executions, saga_log, saga_schema

__all__ = ["ALL_TABLES", "COMPONENT", "LEGACY_INDEX", "SchemaError", "SchemaReport", "inspect_schema", "refusal"]

#: Every table of the current schema, parents first.
ALL_TABLES = [*TABLES[:2], saga_outbox, *TABLES[2:]]

#: The key of this project's row in ``cqrs_saga_schema``.
COMPONENT = "cqrs-saga"
#: Schema 1's recovery index, dropped by version 2.
LEGACY_INDEX = "ix_saga_executions_recovery"
#: python-cqrs's tables (its defaults), told apart from ours by their columns.
_PYTHON_CQRS_EXECUTIONS = {
    "id", "name", "status", "context", "version", "created_at", "updated_at", "recovery_attempts",
}
_PYTHON_CQRS_LOG = "saga_logs"
#: The columns every version of ours has.
_FIRST_COLUMNS = {
    "saga_executions": {c.name for c in saga_executions.columns} - {"trace_context"},
    "saga_log": {c.name for c in saga_log.columns},
    "cqrs_saga_schema": {c.name for c in saga_schema.columns},
    "saga_outbox": {c.name for c in saga_outbox.columns},
}


class SchemaError(RuntimeError):
    """The database's saga tables are not ones this storage can use as they are (see the message)."""


@dataclasses.dataclass(frozen=True)
class SchemaReport:
    """What `inspect_schema` found.

    ``state``: ``empty`` (no saga tables), ``current``, ``older`` (an earlier
    version of ours: `upgrade` brings it up), ``newer`` (written by a later
    cqrs-saga) or ``foreign`` (tables of the same names that are not ours).
    ``version`` is the schema version the tables show (None if empty or
    foreign), ``recorded`` the one ``cqrs_saga_schema`` holds (None if not
    recorded). ``drift`` lists each difference from the current schema, one
    sentence each; ``found`` describes foreign tables.
    """

    state: typing.Literal["empty", "current", "older", "newer", "foreign"]
    version: int | None
    recorded: int | None
    drift: tuple[str, ...] = ()
    found: str = ""

    @property
    def ok(self) -> bool:
        """True when the tables are this version's and nothing drifted."""
        return self.state == "current" and not self.drift

    def lines(self) -> list[str]:
        """The report as sentences for a terminal."""
        if self.state == "empty":
            return ["no saga tables: create them with `cqrs-saga db create` (or storage.create_tables())"]
        if self.state == "foreign":
            return [self.found]
        head = f"schema version {self.version}"
        if self.recorded is None:
            head += " (not recorded in cqrs_saga_schema; `cqrs-saga db upgrade` records it)"
        elif self.recorded != self.version:
            head += f" (cqrs_saga_schema says {self.recorded})"
        head += f"; this cqrs-saga writes version {SCHEMA_VERSION}"
        return [head, *self.drift]


def inspect_schema(conn: sa.Connection) -> SchemaReport:
    """Look at the saga tables ``conn``'s database holds (reads only)."""
    inspector = sa.inspect(conn)
    tables = set(inspector.get_table_names())
    ours = [table.name for table in ALL_TABLES]
    present = [name for name in ours if name in tables]
    if not present or (present == ["cqrs_saga_schema"] and not _recorded(conn, inspector)):
        return SchemaReport("empty", None, None)
    columns = {name: {c["name"] for c in inspector.get_columns(name)} for name in present}
    foreign = [name for name in present if not _FIRST_COLUMNS[name] <= columns[name]]
    if foreign:
        return SchemaReport("foreign", None, None, found=_describe_foreign(foreign, columns, tables))
    recorded = _recorded(conn, inspector)
    version = _version(inspector, columns) if "saga_executions" in columns else recorded or SCHEMA_VERSION
    drift = _drift(inspector, present, columns, version, recorded)
    if recorded is not None and recorded > SCHEMA_VERSION:
        return SchemaReport("newer", recorded, recorded, drift)
    state: typing.Literal["current", "older"] = "current" if version == SCHEMA_VERSION else "older"
    return SchemaReport(state, version, recorded, drift)


def refusal(report: SchemaReport, url: str | None = None) -> SchemaError | None:
    """The error `create_tables` raises for ``report`` (None when it may go ahead)."""
    where = f" --url '{url}'" if url else ""
    if report.state == "foreign":
        return SchemaError(
            f"{report.found} Nothing was written. cqrs-saga never alters tables it did not create: point it at "
            "another database (or schema), or rename those tables and move their sagas over yourself."
        )
    if report.state == "newer":
        return SchemaError(
            f"The saga tables are schema version {report.recorded}, written by a newer cqrs-saga; this one knows "
            f"versions up to {SCHEMA_VERSION}. Nothing was written. Upgrade cqrs-saga."
        )
    if report.state == "older":
        return SchemaError(
            f"The saga tables are schema version {report.version}, from an earlier cqrs-saga; this one writes "
            f"version {SCHEMA_VERSION}. Nothing was written. Upgrade them with `cqrs-saga db upgrade{where}`, "
            "`await storage.upgrade_schema()`, or Alembic (the `cqrs_saga` branch; see docs/operations.md)."
        )
    return None


def _recorded(conn: sa.Connection, inspector: sa.Inspector) -> int | None:
    if not inspector.has_table(saga_schema.name):
        return None
    row = conn.execute(sa.select(saga_schema.c.version).where(saga_schema.c.component == COMPONENT)).first()
    return None if row is None else int(row[0])


def _version(inspector: sa.Inspector, columns: dict[str, set[str]]) -> int:
    if "saga_outbox" in columns:
        return 4
    if "trace_context" in columns.get("saga_executions", set()):
        return 3
    if _has_legacy_index(inspector) or _log_foreign_keys(inspector):
        return 1
    return 2


def _has_legacy_index(inspector: sa.Inspector) -> bool:
    if not inspector.has_table("saga_executions"):
        return False
    return any(index["name"] == LEGACY_INDEX for index in inspector.get_indexes("saga_executions"))


def _log_foreign_keys(inspector: sa.Inspector) -> list[str | None]:
    if not inspector.has_table("saga_log"):
        return []
    return [key.get("name") for key in inspector.get_foreign_keys("saga_log")]


def _drift(
    inspector: sa.Inspector,
    present: list[str],
    columns: dict[str, set[str]],
    version: int,
    recorded: int | None,
) -> tuple[str, ...]:
    drift: list[str] = []
    if version < SCHEMA_VERSION:
        drift.append(f"the tables are schema version {version}: `cqrs-saga db upgrade` brings them to {SCHEMA_VERSION}")
    if recorded is not None and recorded != version:
        drift.append(f"cqrs_saga_schema records version {recorded}, but the tables are version {version}")
    for table in ALL_TABLES:
        if table.name not in present:
            if table is not saga_schema and not (table is saga_outbox and version < 4):
                drift.append(f"table {table.name} is missing")
            continue
        have = columns[table.name]
        want = {c.name for c in table.columns}
        for name in sorted(want - have):
            if not (name == "trace_context" and version < 3):
                drift.append(f"column {table.name}.{name} is missing")
        for name in sorted(have - want):
            drift.append(f"column {table.name}.{name} is not cqrs-saga's")
        nullable = {c["name"]: c["nullable"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in nullable and not column.primary_key and nullable[column.name] != column.nullable:
                should = "NULL" if column.nullable else "NOT NULL"
                drift.append(f"column {table.name}.{column.name} should be {should}")
        indexes = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index.name not in indexes:
                drift.append(f"index {index.name} is missing")
    if version >= 2:  # version 1 says so already
        if _has_legacy_index(inspector):
            drift.append(f"index {LEGACY_INDEX} (schema 1) is still there")
        if _log_foreign_keys(inspector):
            drift.append("saga_log.saga_id still has the foreign key of schema 1")
    return tuple(drift)


def _describe_foreign(foreign: list[str], columns: dict[str, set[str]], tables: set[str]) -> str:
    parts = []
    for name in foreign:
        missing = sorted(_FIRST_COLUMNS[name] - columns[name])
        parts.append(
            f"{name} has columns ({', '.join(sorted(columns[name]))}), without cqrs-saga's "
            f"{', '.join(missing)}"
        )
    text = "The database already holds tables named like cqrs-saga's that are not cqrs-saga's: " + "; ".join(parts)
    if columns.get("saga_executions") == _PYTHON_CQRS_EXECUTIONS or _PYTHON_CQRS_LOG in tables:
        text += " (this is python-cqrs's saga_executions" + (
            ", with its saga_logs)" if _PYTHON_CQRS_LOG in tables else ")"
        )
    return text + "."
