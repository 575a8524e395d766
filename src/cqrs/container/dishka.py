"""dishka's async container as the engine's container: ``pip install 'cqrs-saga[dishka]'``.

    container = make_async_container(MyProvider())
    mediator = bootstrap.bootstrap(DishkaCQRSContainer(container), ...)

Steps and event handlers are taken with ``await container.get(T)``. With
``ScopeStrategy.SEND`` or ``HANDLER`` the engine opens dishka's next scope
(``REQUEST`` under ``APP``) for a run or a step, and closes it when the run ends.
"""

from __future__ import annotations

import contextlib
import typing

try:
    import dishka
except ImportError as _error:  # pragma: no cover - exercised by a test that hides dishka
    raise ImportError("cqrs.container.dishka needs dishka: pip install 'cqrs-saga[dishka]'") from _error

__all__ = ["DishkaCQRSContainer"]

T = typing.TypeVar("T")


class DishkaCQRSContainer:
    """Resolves through a ``dishka.AsyncContainer``."""

    def __init__(self, container: dishka.AsyncContainer | None = None) -> None:
        self._container = container

    @classmethod
    def of(cls, container: dishka.AsyncContainer) -> DishkaCQRSContainer:
        return cls(container)

    @property
    def external_container(self) -> dishka.AsyncContainer:
        if self._container is None:
            raise ValueError("External container not attached: call attach_external_container(container)")
        return self._container

    def attach_external_container(self, container: dishka.AsyncContainer) -> None:
        self._container = container

    async def resolve(self, type_: type[T]) -> T:
        return typing.cast(T, await self.external_container.get(type_))

    @contextlib.asynccontextmanager
    async def open_scope(
        self, context: typing.Mapping[type[typing.Any], typing.Any] | None = None
    ) -> typing.AsyncIterator[DishkaCQRSContainer]:
        """dishka's next scope, as a container of its own (closed, with its finalizers, on exit)."""
        async with self.external_container(context=dict(context) if context else None) as scoped:
            yield DishkaCQRSContainer(scoped)
