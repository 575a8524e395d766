"""Which saga runs for which context type."""

from __future__ import annotations

import typing

from cqrs.saga.exceptions import SagaDefinitionError, SagaNotBoundError
from cqrs.saga.saga import Saga

__all__ = ["SagaMap"]

SagaType = type[Saga[typing.Any]]


class SagaMap(dict[type[typing.Any], SagaType]):
    """Binds context types to saga classes; the mediator looks sagas up here.

    A dict of context type to saga class (as python-cqrs's), that also knows
    every saga by its stored name, for recovery: names must be unique.
    """

    def __init__(self) -> None:
        super().__init__()
        self._by_name: dict[str, SagaType] = {}

    def bind(self, context_type: type[typing.Any], saga_type: SagaType) -> None:
        """Run ``saga_type`` for contexts of ``context_type``.

        Binding a context type to a second, different saga is a ``KeyError``.
        """
        if not (isinstance(saga_type, type) and issubclass(saga_type, Saga)):
            raise SagaDefinitionError(f"SagaMap.bind expects a Saga subclass, got {saga_type!r}")
        if saga_type.context_type is not None and not issubclass(context_type, saga_type.context_type):
            raise SagaDefinitionError(
                f"{saga_type.__qualname__} runs on {saga_type.context_type.__qualname__}, "
                f"not {context_type.__qualname__}"
            )
        bound = dict.get(self, context_type)
        if bound is not None and bound is not saga_type:
            raise KeyError(
                f"{context_type.__qualname__} already runs {bound.__qualname__}; "
                f"it cannot also run {saga_type.__qualname__}"
            )
        self._name(saga_type)
        dict.__setitem__(self, context_type, saga_type)

    def register(self, saga_type: SagaType) -> None:
        """Make a saga known by name (for recovery); its context type is bound to it unless already bound."""
        if saga_type.context_type is None:
            raise SagaDefinitionError(f"{saga_type.__qualname__} declares no context type")
        self._name(saga_type)
        if saga_type.context_type not in self:
            dict.__setitem__(self, saga_type.context_type, saga_type)

    def _name(self, saga_type: SagaType) -> None:
        existing = self._by_name.get(saga_type.name)
        if existing is not None and existing is not saga_type:
            raise SagaDefinitionError(
                f"Sagas {existing.__qualname__} and {saga_type.__qualname__} share the name "
                f"{saga_type.name!r}; give one a distinct `name`"
            )
        self._by_name[saga_type.name] = saga_type

    def __setitem__(self, context_type: type[typing.Any], saga_type: SagaType) -> None:
        self.bind(context_type, saga_type)

    def update(self, *others: typing.Any, **kwargs: typing.Any) -> None:
        """Bind each pair (as `bind`)."""
        for context_type, saga_type in dict(*others).items():
            self.bind(context_type, saga_type)
        if kwargs:
            raise TypeError("SagaMap keys are context types, not names")

    def __ior__(self, other: typing.Any) -> SagaMap:  # type: ignore[override,misc]
        self.update(other)
        return self

    def setdefault(self, context_type: type[typing.Any], saga_type: SagaType) -> SagaType:
        """The saga bound to ``context_type``, binding ``saga_type`` first if none is."""
        if context_type not in self:
            self.bind(context_type, saga_type)
        return self[context_type]

    def __delitem__(self, context_type: type[typing.Any]) -> None:
        raise TypeError("SagaMap has no delete method")

    def __missing__(self, context_type: type[typing.Any]) -> SagaType:
        raise SagaNotBoundError(context_type)

    def saga_for(self, context_type: type[typing.Any]) -> SagaType:
        """The saga bound to ``context_type``; raises `SagaNotBoundError`."""
        return self[context_type]

    def by_name(self, name: str) -> SagaType | None:
        """The saga stored under ``name``, if any."""
        return self._by_name.get(name)

    def sagas(self) -> list[SagaType]:
        """Every saga known by name."""
        return list(self._by_name.values())
