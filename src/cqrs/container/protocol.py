"""The container protocol: what the engine needs to build step and event handler instances."""

from __future__ import annotations

import typing

__all__ = ["Container", "SupportsScope"]

T = typing.TypeVar("T")
C = typing.TypeVar("C")


class Container(typing.Protocol[C]):
    """Anything that can build an instance of a type, resolving its dependencies.

    Only `resolve` is required by the engine. ``external_container`` and
    `attach_external_container` are python-cqrs's way to wrap a third-party
    container (``C``), kept so code written for it (``class MyContainer(Container[Any])``)
    runs unchanged.
    """

    @property
    def external_container(self) -> C:
        """The wrapped third-party container."""
        raise NotImplementedError

    def attach_external_container(self, container: C) -> None:
        """Wrap ``container``."""
        raise NotImplementedError

    async def resolve(self, type_: type[T]) -> T:
        """Return an instance of ``type_``."""
        raise NotImplementedError


@typing.runtime_checkable
class SupportsScope(typing.Protocol):
    """A container that can open a scope: a child container whose scoped instances end with it."""

    def open_scope(
        self, context: typing.Mapping[type[typing.Any], typing.Any] | None = None
    ) -> typing.AsyncContextManager[typing.Any]:
        """An async context manager yielding the scoped container."""
