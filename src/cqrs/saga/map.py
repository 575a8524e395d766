"""Which saga runs for which context type."""

from __future__ import annotations

import typing

from cqrs.saga.exceptions import SagaDefinitionError, SagaNotBoundError
from cqrs.saga.saga import Saga

__all__ = ["SagaMap"]

SagaType = type[Saga[typing.Any]]


class SagaMap:
    """Binds context types to saga classes; the mediator looks sagas up here.

    Recovery looks sagas up by their stored name, so names must be unique.
    """

    def __init__(self) -> None:
        self._by_context: dict[type[typing.Any], SagaType] = {}
        self._by_name: dict[str, SagaType] = {}

    def bind(self, context_type: type[typing.Any], saga_type: SagaType) -> None:
        """Run ``saga_type`` for contexts of ``context_type``."""
        if not (isinstance(saga_type, type) and issubclass(saga_type, Saga)):
            raise SagaDefinitionError(f"SagaMap.bind expects a Saga subclass, got {saga_type!r}")
        if saga_type.context_type is not None and not issubclass(context_type, saga_type.context_type):
            raise SagaDefinitionError(
                f"{saga_type.__qualname__} runs on {saga_type.context_type.__qualname__}, "
                f"not {context_type.__qualname__}"
            )
        existing = self._by_name.get(saga_type.name)
        if existing is not None and existing is not saga_type:
            raise SagaDefinitionError(
                f"Sagas {existing.__qualname__} and {saga_type.__qualname__} share the name "
                f"{saga_type.name!r}; give one a distinct `name`"
            )
        self._by_context[context_type] = saga_type
        self._by_name[saga_type.name] = saga_type

    def register(self, saga_type: SagaType) -> None:
        """Make a saga known by name (for recovery) without binding a context type."""
        if saga_type.context_type is None:
            raise SagaDefinitionError(f"{saga_type.__qualname__} declares no context type")
        self.bind(saga_type.context_type, saga_type)

    def get(self, context_type: type[typing.Any]) -> SagaType:
        """The saga bound to ``context_type``; raises `SagaNotBoundError`."""
        saga_type = self._by_context.get(context_type)
        if saga_type is None:
            raise SagaNotBoundError(context_type)
        return saga_type

    def by_name(self, name: str) -> SagaType | None:
        return self._by_name.get(name)

    def sagas(self) -> list[SagaType]:
        return list(self._by_name.values())

    def __contains__(self, context_type: object) -> bool:
        return context_type in self._by_context
