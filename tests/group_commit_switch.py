"""``CQRS_TEST_GROUP_COMMIT=1``: a `SqlAlchemySagaStorage` on PostgreSQL made without saying ``group_commit`` uses it.

So the suites written for the default storage (the contract, the crash and race
suites, their subprocesses) run with group commit too: their fixtures have a
``postgres-group-commit`` variant that sets the variable (inherited by the
processes they start; `durability.db` installs the switch there). An explicit
``group_commit=...`` is left alone.
"""

from __future__ import annotations

import functools
import os
import typing

ENV = "CQRS_TEST_GROUP_COMMIT"


def wanted(dialect_name: str) -> bool:
    """Whether the switch is on for a storage on ``dialect_name``."""
    return os.environ.get(ENV) == "1" and dialect_name == "postgresql"


def install() -> None:
    """Make the storage's ``group_commit`` default follow `ENV` (once per process)."""
    from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage
    from cqrs.saga.storage.sqlalchemy._engines import engine_of

    init = SqlAlchemySagaStorage.__init__
    if getattr(init, "_follows_env", False):
        return

    @functools.wraps(init)
    def __init__(
        self: typing.Any, source: typing.Any, *, group_commit: bool | None = None, **kwargs: typing.Any
    ) -> None:
        if group_commit is None:
            group_commit = wanted(engine_of(source).dialect.name)
        init(self, source, group_commit=group_commit, **kwargs)

    from_url = SqlAlchemySagaStorage.from_url.__func__  # type: ignore[attr-defined]

    @functools.wraps(from_url)
    def _from_url(
        cls: typing.Any, url: typing.Any, *, group_commit: bool | None = None, **kwargs: typing.Any
    ) -> typing.Any:
        if group_commit is None:
            group_commit = wanted(str(url).split("+", 1)[0].split(":", 1)[0])
        return from_url(cls, url, group_commit=group_commit, **kwargs)

    __init__._follows_env = True  # type: ignore[attr-defined]
    SqlAlchemySagaStorage.__init__ = __init__  # type: ignore[method-assign]
    SqlAlchemySagaStorage.from_url = classmethod(_from_url)  # type: ignore[method-assign,assignment]
