"""Problems (RFC 9457 answers) and reading what clients send: bodies, ids, text, query values.

Whatever a client sends, the integrations answer a 4xx `Problem` for what
they cannot use, before anything is stored: JSON that is malformed, too
large, nested too deeply, has integers too long to read or numbers that are
not finite, or text a database cannot store (NUL, lone surrogates).
"""

from __future__ import annotations

import datetime
import http
import json
import math
import re
import typing
import uuid

from cqrs.saga import _serialization
from cqrs.saga.exceptions import ContextValidationError

#: How deeply JSON bodies may nest (objects and arrays); deeper ones are refused with 400.
MAX_JSON_DEPTH = 64
#: The media type of problem answers (RFC 9457).
PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An answer the integrations give as RFC 9457 problem details (``application/problem+json``).

    ``detail`` says what is wrong (FastAPI users read it where they always
    did); ``errors`` lists ``{"field", "message"}`` for invalid fields;
    ``headers`` go on the answer (``Allow``, ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        errors: list[dict[str, str]] | None = None,
        *,
        headers: typing.Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})
        Exception.__init__(self, detail)

    @property
    def title(self) -> str:
        try:
            return http.HTTPStatus(self.status).phrase
        except ValueError:
            return "Error"

    def to_dict(self, instance: str | None = None) -> dict[str, typing.Any]:
        """The problem document: ``type``, ``title``, ``status``, ``detail`` (and ``instance``, ``errors``)."""
        body: dict[str, typing.Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def check_content_length(value: str | None, *, max_bytes: int) -> None:
    """Reject a declared body size before reading it: 413 if over ``max_bytes``, 400 if not a number.

    Callers must still count the bytes they read (`parse_json_object` does):
    a client may send no ``Content-Length`` or a wrong one.
    """
    if value is None or value == "":
        return
    if not value.isascii() or not value.strip().isdigit():
        raise Problem(400, f"Content-Length {value[:40]!r} is not a number of bytes")
    if len(value.strip()) > 18 or int(value) > max_bytes:
        raise Problem(413, f"The request body is over the limit of {max_bytes} bytes")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:20]} is too large")
    return number


def _no_constant(text: str) -> typing.NoReturn:
    raise ValueError(f"{text} is not a JSON number")


def parse_json_object(raw: bytes, *, max_bytes: int) -> dict[str, typing.Any]:
    """Decode a JSON object body: 413 if too large, 400 if it is not a JSON object `check_json` accepts."""
    if len(raw) > max_bytes:
        raise Problem(413, f"The request body is over the limit of {max_bytes} bytes")
    try:
        value = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise Problem(400, f"The request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise Problem(400, "The request body is not UTF-8 text") from None
    except ValueError as exc:  # JSONDecodeError, and integers over Python's digit limit
        raise Problem(400, f"The request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Problem(400, f"The request body must be a JSON object, got {type(value).__name__}")
    check_json(value)
    return value


def check_json(value: typing.Any, *, status: int = 400, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse (``status``) JSON data nested deeper than ``max_depth``, with text no database stores,
    or with numbers that are not finite. Walks without recursion, so any depth is safe to check.
    """
    stack: list[tuple[typing.Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            check_text(item, path or "the body", status=status)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise Problem(status, f"{path or 'the body'} is not a finite number")
        elif isinstance(item, (dict, list)):
            if depth > max_depth:
                raise Problem(status, f"The data nests deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    name = f"{path}.{key}" if path else str(key)
                    if isinstance(key, str):
                        check_text(key, f"the key {name!r}" if len(name) < 80 else "a key", status=status)
                    stack.append((child, depth + 1, name))
            else:
                stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))


def check_text(text: str, what: str, *, status: int = 400) -> str:
    """``text`` if a database can store it; else ``status``: NUL characters and lone surrogates."""
    if "\x00" in text:
        raise Problem(status, f"{_short(what)} contains a NUL character, which cannot be stored")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Problem(status, f"{_short(what)} contains a lone surrogate, which is not text") from None
    return text


def _short(what: str) -> str:
    return what if len(what) <= 80 else what[:77] + "..."


def build_context(context_type: type[typing.Any], data: typing.Mapping[str, typing.Any]) -> typing.Any:
    """Validate ``data`` into a context; 422 naming each bad field."""
    try:
        return _serialization.validate_context(context_type, data)
    except ContextValidationError as error:
        raise Problem(422, str(error), error.problems) from None


def parse_saga_id(raw: uuid.UUID | str) -> uuid.UUID:
    """A saga id from a URL (or a caller's UUID, returned as it is): 422 if it is not a UUID."""
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        if isinstance(raw, str) and len(raw) <= 64:
            return uuid.UUID(raw)
    except ValueError:
        pass
    shown = raw[:40] + "..." if isinstance(raw, str) and len(raw) > 40 else raw
    raise Problem(422, f"{shown!r} is not a saga id (expected a UUID)")


_DURATION = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,6})?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> datetime.timedelta:
    """``30s``, ``5m``, ``2h``, ``1d``, ``1w`` or a number of seconds; `ValueError` for anything else."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text[:40]!r} is not a duration like 30s, 5m, 2h or 1d")
    return datetime.timedelta(seconds=float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()])
