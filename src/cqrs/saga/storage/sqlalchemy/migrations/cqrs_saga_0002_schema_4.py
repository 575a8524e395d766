"""cqrs-saga: saga tables at schema version 4 (the outbox table), from any earlier version.

Revision ID: cqrs_saga_0002
Revises: cqrs_saga_0001
"""

from __future__ import annotations

from alembic import op

from cqrs.saga.storage.sqlalchemy import _upgrade

revision = "cqrs_saga_0002"
down_revision: str | None = "cqrs_saga_0001"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Bring the saga tables to the current schema (the same upgrade as ``cqrs-saga db upgrade``)."""
    _upgrade.upgrade(op.get_bind())


def downgrade() -> None:
    """Not supported: the saga tables hold live sagas; drop them yourself if you mean to."""
    raise NotImplementedError("cqrs-saga's migrations do not go down; drop the saga tables yourself if you mean to")
