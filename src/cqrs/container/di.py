"""`di` (https://www.adriangb.com/di/) as the engine's container."""

from __future__ import annotations

import contextlib
import inspect
import re
import typing

import di
from di.dependent import Dependent
from di.exceptions import UnknownScopeError
from di.executors import AsyncExecutor

__all__ = ["DIContainer"]

T = typing.TypeVar("T")

#: How many scopes a graph may need that were not named up front (each found costs one solve).
_MAX_DISCOVERED_SCOPES = 8
_UNKNOWN_SCOPE = re.compile(r"has an unknown scope (?P<scope>\w+)\.")


class DIContainer:
    """Resolves types through a ``di.Container``.

    ``DIContainer(container)``, or python-cqrs's ``DIContainer()`` followed by
    `attach_external_container`. Bindings may use any scope: every resolve
    runs in one-shot scopes, ``scope`` (``"request"``, python-cqrs's) innermost
    and di's unnamed scope (``None``, a binding's default) outermost;
    scopes named by bindings (``Dependent(..., scope="app")``) are found on
    the first solve and entered around it, outermost first, or can be listed
    up front in ``scopes``. So a ``"request"``-scoped service is built fresh
    for each resolve, and within one resolve it is shared.

    Solving a dependency graph is costly, so each type is solved once and the
    solution reused; bind everything on the container before the first saga runs.
    """

    def __init__(
        self,
        container: di.Container | str | None = None,
        scope: str = "request",
        *,
        scopes: typing.Sequence[typing.Hashable] = (),
    ) -> None:
        if isinstance(container, str):  # python-cqrs's DIContainer(scope) spelling
            scope, container = container, None
        self._container: di.Container | None = container
        self.scope = scope
        # None is di's scope of bindings that name none (Dependent's default), kept outermost.
        self._scopes: list[typing.Hashable] = [None, *(s for s in scopes if s not in (None, scope)), scope]
        self._solved: dict[type[typing.Any], typing.Any] = {}
        self._factories: dict[type[typing.Any], typing.Callable[[], typing.Any]] = {}
        self._executor = AsyncExecutor()

    @property
    def plain_factories(self) -> typing.Mapping[type[typing.Any], typing.Callable[[], typing.Any]]:
        """Types this container builds with one plain call (no dependencies, no scope), once resolved.

        The engine calls these directly instead of awaiting `resolve`: the same instance, without a
        coroutine per step.
        """
        return self._factories

    @property
    def container(self) -> di.Container:
        """The wrapped ``di.Container``."""
        if self._container is None:
            raise ValueError("External container not attached: call attach_external_container(di.Container())")
        return self._container

    @property
    def external_container(self) -> di.Container:
        return self.container

    def attach_external_container(self, container: di.Container) -> None:
        """Wrap ``container`` (forgetting what was solved against the previous one)."""
        self._container = container
        self._solved.clear()
        self._factories.clear()

    def _solve(self, type_: type[T]) -> typing.Any:
        for _ in range(_MAX_DISCOVERED_SCOPES + 1):
            try:
                return self.container.solve(Dependent(type_, scope=self.scope), scopes=self._scopes)
            except UnknownScopeError as error:
                found = _UNKNOWN_SCOPE.search(str(error))
                if found is None or found["scope"] in self._scopes:
                    raise UnknownScopeError(
                        f"{error}\nName the scopes your bindings use: DIContainer(container, scopes=[...]) "
                        "(outermost first)"
                    ) from error
                self._scopes.insert(1, found["scope"])
        raise UnknownScopeError(f"Resolving {type_!r} needs more than {_MAX_DISCOVERED_SCOPES} unnamed scopes")

    async def resolve(self, type_: type[T]) -> T:
        factory = self._factories.get(type_)
        if factory is not None:
            return typing.cast(T, factory())
        solved = self._solved.get(type_)
        if solved is None:
            solved = self._solve(type_)
            self._solved[type_] = solved
            factory = _plain_factory(solved)
            if factory is not None:
                self._factories[type_] = factory
                return typing.cast(T, factory())
        async with contextlib.AsyncExitStack() as stack:
            state = None
            for scope in self._scopes:
                state = await stack.enter_async_context(self.container.enter_scope(scope, state=state))
            return typing.cast(T, await solved.execute_async(executor=self._executor, state=state))

    @contextlib.asynccontextmanager
    async def open_scope(
        self, context: typing.Mapping[type[typing.Any], typing.Any] | None = None
    ) -> typing.AsyncIterator[_ScopedDIContainer]:
        """A child container whose resolves share one set of scopes until the block ends."""
        async with contextlib.AsyncExitStack() as stack:
            state = None
            for scope in self._scopes:
                state = await stack.enter_async_context(self.container.enter_scope(scope, state=state))
            yield _ScopedDIContainer(self, state)


class _ScopedDIContainer:
    """Resolves in scopes its `DIContainer.open_scope` holds open."""

    __slots__ = ("_parent", "_state")

    def __init__(self, parent: DIContainer, state: typing.Any) -> None:
        self._parent = parent
        self._state = state

    async def resolve(self, type_: type[T]) -> T:
        parent = self._parent
        solved = parent._solved.get(type_)
        if solved is None:
            solved = parent._solved[type_] = parent._solve(type_)
        return typing.cast(T, await solved.execute_async(executor=parent._executor, state=self._state))


def _plain_factory(solved: typing.Any) -> typing.Callable[[], typing.Any] | None:
    """The callable itself, when a solved graph is one synchronous call without arguments.

    Entering a scope and running di's executor costs several microseconds per
    step; a step with no dependencies (the common case for small steps) needs
    neither. Generator callables are context managers to di, so they keep its path.
    """
    if len(solved.dag) != 1:
        return None
    ((dependent, parameters),) = solved.dag.items()
    call = dependent.call
    if parameters or call is None:
        return None
    if inspect.isclass(call):
        return typing.cast(typing.Callable[[], typing.Any], call)
    if inspect.iscoroutinefunction(call) or inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call):
        return None
    return typing.cast(typing.Callable[[], typing.Any], call)
