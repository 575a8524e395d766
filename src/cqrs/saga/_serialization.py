"""Contexts and responses to JSON-ready dicts and back.

Dumping goes through pydantic's serializer (fast, Rust); when it refuses a
value, a slow walk finds the field to name in the error. Loading validates
with pydantic, so nested dataclasses, UUIDs and datetimes come back typed.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import typing
import uuid

import pydantic
import pydantic_core

from cqrs.saga.exceptions import ContextDeserializationError, ContextSerializationError, ContextValidationError

JsonDict = dict[str, typing.Any]
T = typing.TypeVar("T")


def is_context_type(tp: object) -> bool:
    return isinstance(tp, type) and (
        dataclasses.is_dataclass(tp) or issubclass(tp, pydantic.BaseModel)
    )


_adapters: dict[type[typing.Any], pydantic.TypeAdapter[typing.Any]] = {}


def _adapter(tp: type[typing.Any]) -> pydantic.TypeAdapter[typing.Any]:
    adapter = _adapters.get(tp)
    if adapter is None:
        adapter = _adapters[tp] = pydantic.TypeAdapter(tp)
    return adapter


# The serializers of known context types, called directly: the TypeAdapter wrapper costs as much again.
_context_serializers: dict[type[typing.Any], pydantic_core.SchemaSerializer] = {}


def dump_context(context: object) -> JsonDict:
    """The JSON-ready dict of a dataclass or pydantic context, under its own field names."""
    tp = type(context)
    serializer = _context_serializers.get(tp)
    if serializer is None:
        if not is_context_type(tp):
            raise ContextSerializationError(
                f"A saga context must be a dataclass or a pydantic model, got {tp.__qualname__}"
            )
        serializer = _context_serializers[tp] = _adapter(tp).serializer
    try:
        data = serializer.to_python(context, mode="json", by_alias=False, warnings=False)
    except (pydantic_core.PydanticSerializationError, pydantic.PydanticSchemaGenerationError,
            pydantic.PydanticUserError, TypeError, ValueError):
        data = None
    if not isinstance(data, dict):
        path, value = _find_unserialisable(context) or ("<unknown>", context)
        raise ContextSerializationError(
            f"Field {path!r} of {tp.__qualname__} holds a {type(value).__qualname__}, which "
            "cannot be stored as JSON; use str, int, float, bool, None, lists, dicts, UUID, "
            "datetime, Decimal, Enum, dataclasses or pydantic models",
            field=path,
        )
    return data


def load_context(tp: type[T], data: JsonDict, *, saga_id: uuid.UUID | None = None) -> T:
    """Rebuild a context of type ``tp`` from its stored dict."""
    try:
        return typing.cast(T, _adapter(tp).validate_python(data, by_alias=False, by_name=True))
    except pydantic.ValidationError as exc:
        fields = tuple(".".join(str(p) for p in err["loc"]) for err in exc.errors())
        where = f"saga {saga_id}" if saga_id is not None else "a saga"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ContextDeserializationError(
            f"The stored context of {where} no longer fits {tp.__qualname__} ({problems}); "
            "the stored data is kept unchanged",
            saga_id=saga_id,
            fields=fields,
        ) from exc


def restore_in_place(context: object, data: JsonDict) -> None:
    """Put ``context`` back to the state ``data`` was dumped from, keeping its identity."""
    fresh = load_context(type(context), data)
    if isinstance(context, pydantic.BaseModel):
        names: typing.Iterable[str] = type(context).model_fields
    else:
        names = (f.name for f in dataclasses.fields(typing.cast(typing.Any, context)))
    for name in names:
        object.__setattr__(context, name, getattr(fresh, name))


def dump_response(response: object) -> JsonDict | None:
    """A step's response as stored: JSON data, or None for a step that returned no response."""
    if response is None:
        return None
    try:
        serializer = getattr(type(response), "__pydantic_serializer__", None)
        if serializer is not None:
            data = serializer.to_python(response, mode="json", by_alias=False, warnings=False)
        else:  # a dataclass response (python-cqrs 5's default kind)
            data = _adapter(type(response)).dump_python(response, mode="json", warnings=False)
        return typing.cast(JsonDict, data)
    except pydantic_core.PydanticSerializationError as exc:
        raise ContextSerializationError(
            f"The response {type(response).__qualname__} cannot be stored as JSON: {exc}"
        ) from exc


def load_response(tp: type[T], data: JsonDict | None) -> T | None:
    """A stored response as its type again; None where none was stored."""
    if data is None:
        return None
    return typing.cast(T, _adapter(tp).validate_python(data, by_alias=False, by_name=True))


_SCALARS = (str, int, float, bool, type(None), uuid.UUID, datetime.date, datetime.time,
            datetime.timedelta, decimal.Decimal, enum.Enum)


def _find_unserialisable(value: object, path: str = "") -> tuple[str, object] | None:
    """The dotted path of the first value the JSON dump cannot take (slow path, errors only)."""
    if isinstance(value, _SCALARS):
        return None
    if isinstance(value, pydantic.BaseModel):
        items: list[tuple[str, object]] = [
            (name, getattr(value, name)) for name in type(value).model_fields
        ]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        if any(not isinstance(k, (str, int, uuid.UUID, enum.Enum)) for k in value):
            return path or "<root>", value
        items = [(f"[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = [(f"[{i}]", v) for i, v in enumerate(value)]
    else:
        return path or "<root>", value
    for name, child in items:
        child_path = f"{path}{name}" if name.startswith("[") or not path else f"{path}.{name}"
        found = _find_unserialisable(child, child_path)
        if found is not None:
            return found
    return None


def validate_context(context_type: type[T], data: typing.Mapping[str, typing.Any]) -> T:
    """Validate outside input (a request body, an event) into a context.

    `ContextValidationError` names each bad field.
    """
    try:
        return typing.cast(T, _adapter(context_type).validate_python(dict(data), by_alias=False, by_name=True))
    except pydantic.ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]) or "<body>", "message": err["msg"]}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise ContextValidationError(f"Invalid {context_type.__name__}: {summary}", problems) from None


def dump_json(value: object) -> JsonDict:
    """A pydantic model or dataclass (an event) as JSON data."""
    serializer = getattr(type(value), "__pydantic_serializer__", None)
    if serializer is not None:
        return typing.cast(JsonDict, serializer.to_python(value, mode="json", by_alias=False, warnings=False))
    return typing.cast(JsonDict, _adapter(type(value)).dump_python(value, mode="json", warnings=False))
