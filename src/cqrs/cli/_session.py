"""What a command works on: the storage from ``--url`` or the environment, and the saga definitions of ``--app``."""

from __future__ import annotations

import contextlib
import os
import typing
import uuid

from cqrs.cli._exit import CliError, ExitCode
from cqrs.config import SagaConfig, open_storage, storage_url
from cqrs.saga.apps import AppError, load_object, mediator_from, resolve
from cqrs.saga.exceptions import SagaNotFoundError
from cqrs.saga.hooks import SagaHook
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.settings import EngineSettings
from cqrs.saga.storage.protocol import SagaStorage

__all__ = ["not_found", "open_mediator", "opened_storage", "resolve_url"]

_ENV = "CQRS_SAGA_STORAGE_URL"


def resolve_url(url: str | None) -> str:
    """``--url``, else what `SagaConfig.from_env` reads; a usage error if neither names a database."""
    if url is None:
        try:
            url = SagaConfig.from_env().storage_url
        except ValueError as error:
            raise CliError(f"the CQRS_SAGA_* environment is not valid: {error}") from None
        if os.environ.get(_ENV) is None:
            raise CliError(f"no storage given: pass --url or set {_ENV} (e.g. sqlite:///sagas.db)")
    try:
        resolved = storage_url(url)
    except ValueError as error:
        raise CliError(str(error)) from None
    if resolved.startswith("memory://"):
        raise CliError("memory:// holds nothing a command could see: give the database the sagas are stored in")
    return resolved


@contextlib.asynccontextmanager
async def opened_storage(url: str | None) -> typing.AsyncIterator[SagaStorage]:
    """The storage of ``url`` (or the environment's), closed afterwards; tables are never created here."""
    storage = await open_storage(resolve_url(url), create_tables=False)
    try:
        yield storage
    finally:
        await storage.close()


@contextlib.asynccontextmanager
async def open_mediator(
    app: str,
    url: str | None,
    *,
    settings: EngineSettings | None = None,
    hooks: typing.Iterable[SagaHook] = (),
    outbox: bool = False,
) -> typing.AsyncIterator[SagaMediator]:
    """A mediator for ``--app`` over ``--url``'s storage (a mediator app brings its own; then ``--url`` is an error)."""
    try:
        source = await resolve(load_object(app))
    except AppError as error:
        raise CliError(f"--app {app}: {error}") from None
    if isinstance(source, SagaMediator):
        if url is not None:
            raise CliError(f"--app {app} is a SagaMediator with its own storage: drop --url")
        yield source
        return
    async with opened_storage(url) as storage:
        try:
            mediator = await mediator_from(
                source, storage, settings=settings, hooks=hooks, outbox=outbox, what=f"--app {app}"
            )
        except AppError as error:
            raise CliError(str(error)) from None
        yield mediator


def not_found(saga_id: uuid.UUID) -> CliError:
    """The error of an unknown saga id (exit code 3)."""
    return CliError(str(SagaNotFoundError(saga_id)), ExitCode.NOT_FOUND)
