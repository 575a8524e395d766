"""Log records as the library's correlation filter annotates them, captured for assertions."""

from __future__ import annotations

import contextlib
import logging
import typing

from cqrs import correlation


class Capture(logging.Handler):
    """Keeps every record it is handed, after `CorrelationIdFilter` set its correlation and saga ids."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(correlation.CorrelationIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def capturing(logger_name: str) -> typing.Iterator[Capture]:
    """INFO and above of ``logger_name`` (and its children) go to a `Capture` while inside."""
    handler = Capture()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
