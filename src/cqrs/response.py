"""Typed step responses.

`Response` is a pydantic model (python-cqrs 4's default); `DCResponse` is the
dataclass flavour (python-cqrs 5's default). Either works as a step's
response type, as does any pydantic model or dataclass.
"""

from __future__ import annotations

import abc
import dataclasses
import typing

import pydantic

__all__ = ["DCResponse", "IResponse", "PydanticResponse", "Response"]

_P = typing.TypeVar("_P", bound="Response")
_D = typing.TypeVar("_D", bound="DCResponse")


class IResponse(abc.ABC):
    """A response that turns into a dict and back."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, typing.Any]:
        """The response as a dict."""

    @classmethod
    @abc.abstractmethod
    def from_dict(cls, **kwargs: typing.Any) -> typing.Any:
        """A response built from the keyword arguments `to_dict` produced."""


class Response(pydantic.BaseModel, IResponse):
    """Base class of what a saga step returns.

    A pydantic model: subclasses declare fields with annotations. Responses are
    stored with the step that produced them, so a resumed or replayed stream can
    yield them again.
    """

    def to_dict(self) -> dict[str, typing.Any]:
        return self.model_dump(mode="python")

    @classmethod
    def from_dict(cls: type[_P], **kwargs: typing.Any) -> _P:
        return cls.model_validate(kwargs)


@dataclasses.dataclass
class DCResponse(IResponse):
    """A dataclass response; subclasses become dataclasses by themselves."""

    def __init_subclass__(cls, **kwargs: typing.Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__dataclass_fields__" not in cls.__dict__:
            dataclasses.dataclass(cls)

    def to_dict(self) -> dict[str, typing.Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[_D], **kwargs: typing.Any) -> _D:
        return cls(**kwargs)


PydanticResponse = Response
