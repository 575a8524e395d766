"""Saga contexts: the state a saga carries from step to step."""

from __future__ import annotations

import dataclasses
import typing

from cqrs.saga import _serialization

__all__ = ["ContextT", "SagaContext"]

_Self = typing.TypeVar("_Self", bound="SagaContext")


@dataclasses.dataclass
class SagaContext:
    """Base class for dataclass saga contexts.

    Subclass it with ``@dataclasses.dataclass``. Steps read and change the
    context; after each step it is stored as JSON under its own field names.
    Pydantic models work as contexts too, without this base class.
    """

    def to_dict(self) -> dict[str, typing.Any]:
        """The JSON-ready dict this context is stored as."""
        return _serialization.dump_context(self)

    @classmethod
    def from_dict(cls: type[_Self], data: dict[str, typing.Any]) -> _Self:
        """Build a context from a dict made by `to_dict`.

        Keys are matched to fields loosely, as python-cqrs does (its contexts
        were stored with camelCase keys): case and ``_``/``-`` are ignored,
        unknown keys are dropped, and of two keys naming one field the later wins.
        """
        return _serialization.load_context(cls, _loose_keys(cls, data))


def _loose_keys(cls: type[typing.Any], data: dict[str, typing.Any]) -> dict[str, typing.Any]:
    fields = {_squash(field.name): field.name for field in dataclasses.fields(cls)}
    if all(key in fields.values() for key in data):
        return data
    matched: dict[str, typing.Any] = {}
    for key, value in data.items():
        name = fields.get(_squash(key))
        if name is not None:
            matched[name] = value
    return matched


def _squash(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


#: A saga's context type (python-cqrs's name, importable from here as there).
ContextT = typing.TypeVar("ContextT", bound=SagaContext)
