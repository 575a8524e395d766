"""`di` (https://www.adriangb.com/di/) as the engine's container."""

from __future__ import annotations

import inspect
import typing

import di
from di.dependent import Dependent
from di.executors import AsyncExecutor

__all__ = ["DIContainer"]

T = typing.TypeVar("T")


class DIContainer:
    """Resolves types through a ``di.Container``.

    Solving a dependency graph is costly, so each type is solved once and the
    solution reused; bind everything on the container before the first saga runs.
    """

    def __init__(self, container: di.Container) -> None:
        self.container = container
        self._solved: dict[type[typing.Any], typing.Any] = {}
        self._factories: dict[type[typing.Any], typing.Callable[[], typing.Any]] = {}
        self._executor = AsyncExecutor()

    async def resolve(self, type_: type[T]) -> T:
        factory = self._factories.get(type_)
        if factory is not None:
            return typing.cast(T, factory())
        solved = self._solved.get(type_)
        if solved is None:
            solved = self.container.solve(Dependent(type_, scope=None), scopes=[None])
            self._solved[type_] = solved
            factory = _plain_factory(solved)
            if factory is not None:
                self._factories[type_] = factory
                return typing.cast(T, factory())
        async with self.container.enter_scope(None) as state:
            return typing.cast(T, await solved.execute_async(executor=self._executor, state=state))


def _plain_factory(solved: typing.Any) -> typing.Callable[[], typing.Any] | None:
    """The callable itself, when a solved graph is one synchronous call without arguments.

    Entering a scope and running di's executor costs several microseconds per
    step; a step with no dependencies (the common case for small steps) needs
    neither. Generator callables are context managers to di, so they keep its path.
    """
    if len(solved.dag) != 1:
        return None
    (dependent, parameters), = solved.dag.items()
    call = dependent.call
    if parameters or call is None:
        return None
    if inspect.isclass(call):
        return typing.cast(typing.Callable[[], typing.Any], call)
    if inspect.iscoroutinefunction(call) or inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call):
        return None
    return typing.cast(typing.Callable[[], typing.Any], call)
