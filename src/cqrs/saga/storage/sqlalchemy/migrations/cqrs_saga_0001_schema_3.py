"""cqrs-saga: the saga tables created, or an earlier schema of them upgraded (schema 3 when written).

Revision ID: cqrs_saga_0001
Revises: (none; the root of the cqrs_saga branch)
"""

from __future__ import annotations

from alembic import op

from cqrs.saga.storage.sqlalchemy import _upgrade

revision = "cqrs_saga_0001"
down_revision: str | None = None
branch_labels = ("cqrs_saga",)
depends_on: str | None = None


def upgrade() -> None:
    """Create the saga tables, or upgrade an earlier schema of them in place, keeping every row."""
    _upgrade.upgrade(op.get_bind())


def downgrade() -> None:
    """Not supported: the saga tables hold live sagas; drop them yourself if you mean to."""
    raise NotImplementedError("cqrs-saga's migrations do not go down; drop the saga tables yourself if you mean to")
