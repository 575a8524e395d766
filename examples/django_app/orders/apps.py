"""The orders app. Sagas are configured by ``cqrs.integrations.django`` from ``settings.CQRS_SAGA``."""

from __future__ import annotations

from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Nothing to do: the saga app's ready() has read CQRS_SAGA (sagas, container,
        # storage in this database) once; the storage opens on first use.
        pass
