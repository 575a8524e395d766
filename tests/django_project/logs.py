"""A log handler that keeps its records, to see what ``CQRS_SAGA["LOGGING"]`` adds to them."""

from __future__ import annotations

import logging


class RecordingHandler(logging.Handler):
    records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)
        RecordingHandler.records.append(record)
