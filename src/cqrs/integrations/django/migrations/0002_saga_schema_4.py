"""Brings the saga tables `0001_saga_tables` created to the current schema (outbox table, trace context,
recorded schema version); see `upgrade_saga_tables`."""

from __future__ import annotations

from django.db import migrations  # type: ignore[import-untyped]

from cqrs.integrations.django.transaction import upgrade_saga_tables


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("cqrs_saga", "0001_saga_tables")]
    operations = [migrations.RunPython(upgrade_saga_tables, migrations.RunPython.noop, elidable=False)]
