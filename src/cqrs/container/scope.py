"""Scope strategies: which container scope each instance a saga run resolves lives in.

python-cqrs 5's `ScopeStrategy`, with the same names:

- ``NONE`` (the default): the engine opens no scope; the container decides
  (`DIContainer` opens a one-shot ``"request"`` scope per resolve).
- ``SEND``: one scope per saga run: its steps, compensations and event
  handlers share scoped instances (a unit of work); the scope closes when
  the run ends.
- ``HANDLER``: one scope per step (and per event handler); each closes when
  the run ends, so a step's ``compensate`` still sees the instance its
  ``act`` ran on.

Scopes need a container with ``open_scope`` (`SupportsScope`: `DIContainer`,
the dishka adapter); with other containers every strategy behaves as ``NONE``.
"""

from __future__ import annotations

import contextlib
import enum
import typing

from cqrs.container.protocol import SupportsScope

__all__ = ["ScopeStrategy"]

T = typing.TypeVar("T")


class ScopeStrategy(enum.Enum):
    """Which scope instances resolved for a saga run live in (see the module doc)."""

    NONE = "none"
    SEND = "send"
    HANDLER = "handler"


class RunScope:
    """The container one saga run resolves from, opening scopes as the strategy says."""

    __slots__ = ("_container", "_run_scope", "_stack", "strategy")

    def __init__(self, container: typing.Any, strategy: ScopeStrategy) -> None:
        self._container = container
        self.strategy = strategy
        self._stack: contextlib.AsyncExitStack | None = None
        self._run_scope: typing.Any = None

    @property
    def external_container(self) -> typing.Any:
        return getattr(self._container, "external_container", None)

    def attach_external_container(self, container: typing.Any) -> None:
        raise TypeError("A saga run's container cannot be re-attached")

    async def _open(self) -> typing.Any:
        if self._stack is None:
            self._stack = contextlib.AsyncExitStack()
        return await self._stack.enter_async_context(self._container.open_scope())

    async def resolve(self, type_: type[T]) -> T:
        if not isinstance(self._container, SupportsScope):
            return typing.cast(T, await self._container.resolve(type_))
        if self.strategy is ScopeStrategy.SEND:
            if self._run_scope is None:
                self._run_scope = await self._open()
            return typing.cast(T, await self._run_scope.resolve(type_))
        scoped = await self._open()
        return typing.cast(T, await scoped.resolve(type_))

    async def aclose(self) -> None:
        """Close every scope this run opened (newest first)."""
        stack, self._stack, self._run_scope = self._stack, None, None
        if stack is not None:
            await stack.aclose()
