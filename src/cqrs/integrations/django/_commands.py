"""What the management commands share: durations, tables, a storage of their own."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import re
import typing

from django.core.management.base import CommandError  # type: ignore[import-untyped]

from cqrs.config import SagaConfig
from cqrs.integrations.django import _runtime

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> datetime.timedelta:
    """``30s``, ``5m``, ``2h``, ``1d``, ``1w`` or a number of seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 2h or 1d")
    return datetime.timedelta(seconds=float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()])


def duration_option(text: str) -> datetime.timedelta:
    """An argparse ``type=``: errors become usage errors naming the option's value."""
    import argparse

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def humanize(delta: datetime.timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def aware(value: datetime.datetime | None) -> datetime.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=datetime.timezone.utc)
    return value


def table(headers: typing.Sequence[str], rows: typing.Sequence[typing.Sequence[str]]) -> list[str]:
    """Rows as lines of left-aligned columns under their headers."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=False)]

    def line(cells: typing.Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False)).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def command_config() -> SagaConfig:
    """A copy of the project's saga config with a storage of its own (for ``asyncio.run`` in a command)."""
    try:
        settings = _runtime.current().require()
        url = settings.resolve_storage_url()
    except Exception as error:
        raise CommandError(str(error)) from error
    return dataclasses.replace(settings.config, storage=None, storage_url=url)


@contextlib.asynccontextmanager
async def opened(config: SagaConfig, *, create_tables: bool | None = None) -> typing.AsyncIterator[SagaConfig]:
    """``config`` initialized (creating tables if ``create_tables``, default the config's), then closed."""
    if create_tables is not None:
        config.create_tables = create_tables
    await config.initialize()
    try:
        yield config
    finally:
        await config.close()
