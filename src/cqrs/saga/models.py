"""Saga contexts: the state a saga carries from step to step."""

from __future__ import annotations

import dataclasses
import typing

from cqrs.saga import _serialization

__all__ = ["SagaContext"]

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
        """Build a context from a dict made by `to_dict`."""
        return _serialization.load_context(cls, data)
