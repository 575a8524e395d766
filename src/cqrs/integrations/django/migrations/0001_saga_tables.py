"""Creates ``saga_executions`` and ``saga_log`` in the database the sagas live in.

The tables are defined once, by the SQLAlchemy storage
(``cqrs.saga.storage.sqlalchemy.Base``); this migration compiles that
definition for the connection's dialect. It does nothing on databases that
do not hold the sagas (``CQRS_SAGA["STORAGE_URL"]`` elsewhere, or another alias).
"""

from __future__ import annotations

from django.db import migrations  # type: ignore[import-untyped]

from cqrs.integrations.django.transaction import create_saga_tables, drop_saga_tables


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [migrations.RunPython(create_saga_tables, drop_saga_tables, elidable=False)]
