"""The small protocol the engine uses to build step handlers and event handlers."""

from __future__ import annotations

import typing

__all__ = ["Container", "as_container"]

T = typing.TypeVar("T")


@typing.runtime_checkable
class Container(typing.Protocol):
    """Anything that can build an instance of a type, resolving its dependencies."""

    async def resolve(self, type_: type[T]) -> T:
        """Return an instance of ``type_``."""


def as_container(container: typing.Any) -> Container:
    """Accept a `Container`, or a plain ``di.Container`` (wrapped for you)."""
    if isinstance(container, Container):
        return container
    import di

    if isinstance(container, di.Container):
        from cqrs.adapters.di import DIContainer

        return DIContainer(container)
    raise TypeError(
        f"Expected a di.Container or an object with an async resolve(type) method, got {container!r}"
    )
