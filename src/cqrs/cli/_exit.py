"""The exit codes of ``cqrs-saga`` and the one error type its commands raise."""

from __future__ import annotations

import enum

__all__ = ["CliError", "ExitCode"]


class ExitCode(enum.IntEnum):
    """What ``cqrs-saga`` exits with (documented in docs/operations.md; scripts may rely on them)."""

    OK = 0
    #: The command worked and the answer is no: the saga ended failed, ``db check`` found drift.
    NO = 1
    #: A bad option, argument, storage URL or ``--app``.
    USAGE = 2
    #: No saga with that id is stored.
    NOT_FOUND = 3
    #: The action is not allowed in the saga's state, or a runner holds the saga.
    REFUSED = 4
    #: The database cannot be used: unreachable, or its saga tables are missing, foreign or of another version.
    STORAGE = 5
    #: Interrupted (Ctrl-C).
    INTERRUPTED = 130


class CliError(Exception):
    """A user error: printed as ``error: <message>`` and exited with ``code``, without a traceback."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.code = code
