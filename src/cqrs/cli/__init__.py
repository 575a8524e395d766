"""``cqrs-saga``: see and steer stored sagas from a shell (also ``python -m cqrs``).

    pip install 'cqrs-saga[cli]'
    cqrs-saga --help

Commands: ``list``, ``show``, ``watch``, ``worker``, ``recover``, ``park``,
``reset``, ``retry``, ``resolve``, ``skip``, ``purge``, ``diagram`` and
``db create|check|upgrade``. The storage comes from ``--url`` or the
environment `SagaConfig.from_env` reads (``CQRS_SAGA_STORAGE_URL``); saga
definitions, where a command runs saga code, from ``--app module:object``.

Exit codes (`ExitCode`), for shell scripts: 0 done; 1 the answer is no (the
saga ended failed, ``db check`` found drift); 2 usage (a bad option, URL or
``--app``); 3 no such saga; 4 refused (the saga's state does not allow it, or
a runner holds it); 5 the database cannot be used (unreachable, or its tables
are missing, foreign or of another version); 130 interrupted. Errors are one
line on stderr, ``error: ...``, never a traceback.
"""

from __future__ import annotations

import sys

from cqrs.cli._exit import ExitCode

__all__ = ["ExitCode", "main"]


def main(argv: list[str] | None = None) -> None:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); exits with an `ExitCode`."""
    try:
        from cqrs.cli._commands import app
    except ImportError as error:
        if getattr(error, "name", None) not in ("typer", "rich", "click"):
            raise
        print(
            "error: the cqrs-saga command line needs Typer and Rich: pip install 'cqrs-saga[cli]'",
            file=sys.stderr,
        )
        raise SystemExit(ExitCode.USAGE) from None
    app(args=argv, prog_name="cqrs-saga")
