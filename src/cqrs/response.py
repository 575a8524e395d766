"""Typed step responses."""

from __future__ import annotations

import pydantic

__all__ = ["Response"]


class Response(pydantic.BaseModel):
    """Base class of what a saga step returns.

    A pydantic model: subclasses declare fields with annotations. Responses are
    stored with the step that produced them, so a resumed or replayed stream can
    yield them again.
    """
