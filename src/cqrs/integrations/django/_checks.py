"""``manage.py check`` for ``CQRS_SAGA`` and ``CQRS_SAGA_WEBHOOKS``, and re-reading them when tests override them."""

from __future__ import annotations

import typing

from django.core import checks  # type: ignore[import-untyped]

from cqrs.integrations.django import _runtime


def check_settings(app_configs: typing.Any = None, **kwargs: typing.Any) -> list[typing.Any]:
    """An error (``cqrs_saga.E001``) when ``CQRS_SAGA`` or ``CQRS_SAGA_WEBHOOKS`` cannot be used."""
    sagas = _runtime.current_or_none()
    if sagas is None or sagas.error is None:
        return []
    return [
        checks.Error(
            str(sagas.error),
            hint="Fix the setting it names; `python manage.py saga_check` shows every check.",
            id="cqrs_saga.E001",
        )
    ]


def on_setting_changed(*, setting: str, **kwargs: typing.Any) -> None:
    """Re-read the saga settings when ``override_settings`` (or pytest-django's ``settings``) changes one."""
    if setting in ("CQRS_SAGA", "CQRS_SAGA_WEBHOOKS"):
        _runtime.setup()
