"""``manage.py check`` for ``CQRS_SAGA``, and re-reading it when tests override it."""

from __future__ import annotations

import typing

from django.core import checks  # type: ignore[import-untyped]

from cqrs.integrations.django import _runtime


def check_settings(app_configs: typing.Any = None, **kwargs: typing.Any) -> list[typing.Any]:
    """An error (``cqrs_saga.E001``) when ``CQRS_SAGA`` cannot be used."""
    runtime = _runtime.current_or_none()
    if runtime is None or runtime.error is None:
        return []
    return [
        checks.Error(
            f"CQRS_SAGA is invalid: {runtime.error}",
            hint="Fix settings.CQRS_SAGA; `python manage.py saga_check` shows every check.",
            id="cqrs_saga.E001",
        )
    ]


def on_setting_changed(*, setting: str, **kwargs: typing.Any) -> None:
    """Re-read ``CQRS_SAGA`` when ``override_settings`` (or pytest-django's ``settings``) changes it."""
    if setting == "CQRS_SAGA":
        _runtime.setup()
