"""`di` (https://www.adriangb.com/di/) as the engine's container."""

from __future__ import annotations

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
        self._executor = AsyncExecutor()

    async def resolve(self, type_: type[T]) -> T:
        solved = self._solved.get(type_)
        if solved is None:
            solved = self.container.solve(Dependent(type_, scope=None), scopes=[None])
            self._solved[type_] = solved
        async with self.container.enter_scope(None) as state:
            return typing.cast(T, await solved.execute_async(executor=self._executor, state=state))
