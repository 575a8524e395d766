"""Containers: how the engine builds step and event handler instances.

`Container` is the protocol (an async ``resolve(type)``); `DIContainer` wraps
a ``di.Container``; `cqrs.container.dishka` and
`cqrs.container.dependency_injector` wrap those libraries' containers (extras).
A plain ``di.Container`` given to `bootstrap` or `SagaMediator` is wrapped for you.
"""

from __future__ import annotations

import typing

from cqrs.container.di import DIContainer
from cqrs.container.protocol import Container, SupportsScope
from cqrs.container.scope import ScopeStrategy

__all__ = ["Container", "DIContainer", "ScopeStrategy", "SupportsScope", "as_container"]


def as_container(container: typing.Any) -> Container[typing.Any]:
    """Accept an object with an async ``resolve(type)``, or a plain ``di.Container`` (wrapped for you)."""
    import di

    if isinstance(container, di.Container):
        return DIContainer(container)
    if callable(getattr(container, "resolve", None)):
        return typing.cast("Container[typing.Any]", container)
    raise TypeError(
        f"Expected a di.Container or an object with an async resolve(type) method, got {container!r}"
    )
