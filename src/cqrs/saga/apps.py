"""Saga definitions named by tools: ``module:object`` turned into a `SagaMediator` over a storage.

The ``cqrs-saga`` CLI (``--app``) and the saga console take the same things:
a `SagaMap`, a list (or tuple) of `Saga` classes, a `SagaMediator`, or a
callable taking no arguments that returns one of these (or an awaitable of
one). A mediator brings its own storage; the others get a mediator over the
storage the tool opened.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import typing

from cqrs.saga.hooks import SagaHook
from cqrs.saga.map import SagaMap
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.saga import Saga
from cqrs.saga.settings import EngineSettings
from cqrs.saga.storage.protocol import SagaStorage

__all__ = ["AppError", "load_object", "mediator_from", "resolve", "saga_map_of"]

class AppError(ValueError):
    """``module:object`` could not be imported, or is not saga definitions (the message says which)."""


def load_object(spec: str) -> typing.Any:
    """Import ``module:attribute`` (the current directory is importable, as for ``python -m``)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AppError(f"expected module:object, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise AppError(f"cannot import {module_name!r}: {error}") from error
    found: typing.Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise AppError(f"module {module_name!r} has no {attribute!r}") from None
    return found


async def mediator_from(
    source: typing.Any,
    storage: SagaStorage | None,
    *,
    settings: EngineSettings | None = None,
    hooks: typing.Iterable[SagaHook] = (),
    outbox: bool = False,
    what: str = "the app",
) -> SagaMediator:
    """A mediator for ``source`` (see the module docstring), over ``storage`` unless it is a mediator already.

    ``outbox``: its runs write notification events to the outbox (as the app's own mediator does, if it does).

    Raises `AppError` for anything else, or when ``storage`` is None and a
    storage is needed.
    """
    source = await resolve(source)
    if isinstance(source, SagaMediator):
        return source
    saga_map = saga_map_of(source, what)
    if storage is None:
        raise AppError(f"{what} gives saga definitions but no storage")
    import di

    return SagaMediator(saga_map, di.Container(), storage=storage, settings=settings, hooks=hooks, outbox=outbox)


async def resolve(source: typing.Any) -> typing.Any:
    """``source``, or what it returns if it is a factory (a callable that is not a class), awaited if need be."""
    if callable(source) and not isinstance(source, (type, SagaMap, SagaMediator)):
        source = source()
        if inspect.isawaitable(source):
            source = await source
    return source


def saga_map_of(source: typing.Any, what: str = "the app") -> SagaMap:
    """``source`` as a `SagaMap`: a SagaMap as it is, a list or tuple of Saga classes registered."""
    if isinstance(source, SagaMap):
        return source
    if isinstance(source, (list, tuple)) and source and all(
        isinstance(item, type) and issubclass(item, Saga) for item in source
    ):
        saga_map = SagaMap()
        for saga_type in source:
            saga_map.register(saga_type)
        return saga_map
    raise AppError(
        f"{what} is {type(source).__name__}, not saga definitions: give a SagaMap, a list of Saga classes, "
        "a SagaMediator, or a callable returning one"
    )
