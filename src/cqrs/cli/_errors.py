"""User errors as one line and an exit code, never a traceback (`run` wraps every command)."""

from __future__ import annotations

import asyncio
import sys
import typing

from cqrs.cli._exit import CliError, ExitCode
from cqrs.saga.apps import AppError
from cqrs.saga.exceptions import SagaNotFoundError, UnknownSagaError
from cqrs.saga.operations import OperationRefusedError

__all__ = ["run"]


def run(work: typing.Callable[[], typing.Awaitable[int | None]]) -> int:
    """Run ``work`` in a new event loop; its exit code, or the code of the error it raised (printed to stderr)."""
    try:
        return int(asyncio.run(work()) or ExitCode.OK)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as error:
        classified = classify(error)
        if classified is None:
            raise
        code, message = classified
        print(f"error: {message}", file=sys.stderr)
        return code


def classify(error: BaseException) -> tuple[ExitCode, str] | None:
    """The exit code and message of a user error; None for a bug (which keeps its traceback)."""
    if isinstance(error, CliError):
        return error.code, str(error)
    if isinstance(error, SagaNotFoundError):
        return ExitCode.NOT_FOUND, str(error)
    if isinstance(error, OperationRefusedError):
        return ExitCode.REFUSED, str(error)
    if isinstance(error, (AppError, UnknownSagaError)):
        return ExitCode.USAGE, str(error)
    if type(error).__name__ == "SchemaError":
        return ExitCode.STORAGE, str(error)
    if isinstance(error, ImportError) and "pip install" in str(error):
        return ExitCode.USAGE, str(error)
    if _is_database_error(error):
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = ""
        if "saga_executions" in first or "saga_log" in first:
            hint = " (are the saga tables there? `cqrs-saga db check` says; `cqrs-saga db create` makes them)"
        return ExitCode.STORAGE, f"cannot use the database: {first}{hint}"
    return None


def _is_database_error(error: BaseException) -> bool:
    if isinstance(error, (OSError, ConnectionError, asyncio.TimeoutError)):
        return True
    try:
        import sqlalchemy.exc
    except ImportError:  # pragma: no cover - the SQL storage needs it anyway
        return False
    return isinstance(error, (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ArgumentError))
