"""The durable saga storage: SQLAlchemy Core on PostgreSQL (asyncpg), SQLite (aiosqlite) or MySQL/MariaDB (asyncmy).

    pip install 'cqrs-saga[postgres]'   # or 'cqrs-saga[sqlite]', 'cqrs-saga[mysql]'

    storage = SqlAlchemySagaStorage.from_url("postgresql+asyncpg://user@host/db")
    await storage.create_tables()       # or Alembic: the `cqrs_saga` branch in :migrations

Schema versions: the tables record the version they were written at
(``cqrs_saga_schema``); `create_tables` refuses foreign, older or newer
tables of the same names before writing anything, `upgrade_schema` upgrades
every earlier version, `check_schema` reports drift. The same upgrade ships
as an Alembic revision in ``cqrs.saga.storage.sqlalchemy:migrations``.

`SqlAlchemySagaStorage` also takes an ``async_sessionmaker`` (or an
``AsyncSession``, or an ``AsyncEngine``) and does its work on that session's
engine: SQLAlchemy Core statements on connections of its own from the
engine's pool, never the ORM unit of work, so the saga's writes commit on
their own, whatever the session is doing. The statements are built once per
storage and reused, so SQLAlchemy's compiled cache is hit without rebuilding
a statement per call.

On PostgreSQL through asyncpg the single-statement writes take a fast path by
default: the SQL SQLAlchemy compiles, run on the pooled asyncpg connection
itself (SQLAlchemy's statement events and ``echo`` do not see those writes;
``fast_path=False`` routes them through SQLAlchemy). On a SQLite file each
write transaction is one call to a writer thread with a ``sqlite3``
connection of the storage's own (the same SQL; ``fast_path=False`` too).
Everything else, and MySQL and MariaDB, go through SQLAlchemy.

Inside:

- `_layout`: what a database holds (schema version, foreign tables, drift);
  `_upgrade`: creating the tables and upgrading earlier versions;
- `_schema`: the tables, their indexes and column types, the database clock,
  rows turned into records;
- `_statements`: every statement, per dialect family;
- `_outbox_schema`, `_outbox_statements`, `_outbox_transactions`, `_outbox`:
  the outbox table, its statements and transactions, and the storage's
  `cqrs.outbox.OutboxStorage` methods;
- `_executors`: how statements run (SQLAlchemy, or the asyncpg and SQLite fast paths);
- `_claims`, `_claim_statements`, `_claim_batches`: claims with their
  histories in one statement, and one-saga claims made at once sent together;
- `_transactions`: the multi-statement transactions of SQLite and MySQL;
- `_storage`: `SqlAlchemySagaStorage` itself; `_engines`: the engines it works on, or makes.
"""

from __future__ import annotations

try:
    import sqlalchemy as _sqlalchemy  # noqa: F401
except ImportError as _error:  # pragma: no cover - exercised by a test that hides sqlalchemy
    raise ImportError(
        "cqrs.saga.storage.sqlalchemy needs SQLAlchemy: pip install 'cqrs-saga[sqlalchemy]' "
        "(or 'cqrs-saga[postgres]' / 'cqrs-saga[sqlite]' / 'cqrs-saga[mysql]' for the database drivers too)"
    ) from _error

from cqrs.saga.storage.sqlalchemy._layout import SchemaError, SchemaReport
from cqrs.saga.storage.sqlalchemy._outbox_schema import saga_outbox
from cqrs.saga.storage.sqlalchemy._schema import SCHEMA_VERSION, Base, saga_executions, saga_log, saga_schema
from cqrs.saga.storage.sqlalchemy._schema import database_now as database_now  # for the Django integration
from cqrs.saga.storage.sqlalchemy._storage import SqlAlchemySagaStorage

__all__ = [
    "SCHEMA_VERSION",
    "Base",
    "SchemaError",
    "SchemaReport",
    "SqlAlchemySagaStorage",
    "saga_executions",
    "saga_log",
    "saga_outbox",
    "saga_schema",
]
