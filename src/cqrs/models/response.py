"""Response models under python-cqrs 5's path."""

from cqrs.response import DCResponse, IResponse, PydanticResponse, Response

__all__ = ["DCResponse", "IResponse", "PydanticResponse", "Response"]
