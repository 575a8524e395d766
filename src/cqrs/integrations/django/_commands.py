"""What the management commands share: durations, tables, a storage of their own."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
import typing

from django.core.management.base import CommandError  # type: ignore[import-untyped]

from cqrs.config import SagaConfig, open_storage
from cqrs.integrations._requests import parse_duration as _parse_duration
from cqrs.integrations.django import _runtime
from cqrs.integrations.django._settings import redact
from cqrs.saga.storage.protocol import SagaStorage

logger = logging.getLogger("cqrs.integrations.django")
T = typing.TypeVar("T")


def parse_duration(text: str) -> datetime.timedelta:
    """``30s``, ``5m``, ``2h``, ``1d``, ``1w`` or a number of seconds."""
    return _parse_duration(text)


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
    """The project's saga config with the storage URL it uses now (a command opens its own storage)."""
    try:
        settings = _runtime.current().require()
        return settings.prepare(settings.config)
    except Exception as error:
        raise CommandError(str(error)) from error


@contextlib.asynccontextmanager
async def opened(config: SagaConfig, *, create_tables: bool | None = None) -> typing.AsyncIterator[SagaStorage]:
    """``config``'s storage, opened (creating tables if ``create_tables``, default the config's), then closed."""
    storage = config.storage or await open_storage(
        config.storage_url, create_tables=config.create_tables if create_tables is None else create_tables
    )
    try:
        yield storage
    finally:
        if config.storage is None:
            await storage.close()


def one_line(error: BaseException) -> str:
    """An error as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


async def probe(storage: SagaStorage, config: SagaConfig) -> None:
    """A query the storage must answer; `CommandError` (one line) when the database is down or unmigrated."""
    try:
        await storage.list_sagas(limit=1)
    except Exception as error:
        raise CommandError(
            f"Cannot use the saga database {redact(config.storage_url)}: {one_line(error)} "
            "(is the database up, and `python manage.py migrate` run?)"
        ) from None


def run(coro: typing.Coroutine[typing.Any, typing.Any, T]) -> T:
    """``asyncio.run(coro)`` for a command, without stray tracebacks from database driver threads.

    A driver that runs connections in threads (aiosqlite) may report a failed
    connect after the command's loop has closed ("Event loop is closed" in
    its thread); the command has already reported the failure in one line,
    so such a late report is logged at debug level instead of printed.
    """
    previous_thread_hook = threading.excepthook

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, RuntimeError) and "Event loop is closed" in str(args.exc_value):
            logger.debug("A database driver thread reported after the command's loop closed", exc_info=args.exc_value)
            return
        previous_thread_hook(args)

    threading.excepthook = thread_hook
    try:
        return asyncio.run(coro)
    finally:
        # Driver threads still finishing report through the hook above: let them, then restore it.
        late = [t for t in threading.enumerate() if t is not threading.current_thread() and _driver_thread(t)]
        for thread in late:
            thread.join(timeout=2)
        if not any(thread.is_alive() for thread in late):
            threading.excepthook = previous_thread_hook


def _driver_thread(thread: threading.Thread) -> bool:
    target = getattr(thread, "_target", None)
    return str(getattr(target, "__module__", "")).startswith("aiosqlite") or "_connection_worker" in thread.name
