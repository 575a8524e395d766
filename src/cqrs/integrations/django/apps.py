"""The Django app: ``INSTALLED_APPS = [..., "cqrs.integrations.django"]``."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]


class SagaAppConfig(AppConfig):  # type: ignore[misc]
    """Reads ``settings.CQRS_SAGA`` once, at startup, and makes it the process's saga config.

    The storage is opened on first use (not here), so management commands such
    as ``migrate`` and ``saga_check`` start without touching the database. A
    SQLite database that holds the sagas is switched to WAL journal mode when
    Django first connects to it (see `transaction.prepare_sqlite_connection`).
    """

    name = "cqrs.integrations.django"
    label = "cqrs_saga"
    verbose_name = "Sagas"
    default = True

    def ready(self) -> None:
        from django.core import checks  # type: ignore[import-untyped]
        from django.core.signals import setting_changed  # type: ignore[import-untyped]
        from django.db.backends.signals import connection_created  # type: ignore[import-untyped]

        from cqrs.integrations.django import _checks, _runtime, transaction

        _runtime.setup()
        connection_created.connect(transaction.prepare_sqlite_connection, dispatch_uid="cqrs_saga_sqlite_wal")
        setting_changed.connect(_checks.on_setting_changed, dispatch_uid="cqrs_saga_setting_changed")
        checks.register(_checks.check_settings, "cqrs_saga")
