"""Event triggers: start sagas from incoming events (webhooks), idempotently and authenticated.

Declare on a saga a method that turns an event into the saga's context::

    class OrderSaga(Saga[OrderContext]):
        steps = [...]

        @trigger(source="order_created", idempotency_key="order_id")
        def from_order_created(self, event: dict) -> OrderContext | None:
            return OrderContext(order_id=event["order_id"], amount=event["amount"])

`TriggerRouter` is the framework-agnostic core behind every event source: it
records every saga an event starts (before the caller answers) and tells the
caller which ones to run in the background. Webhooks (signatures, bodies,
HTTP answers) are `cqrs.integrations.webhooks`; broker subscriptions feed the
same router.

Idempotency needs no extra table. The id of a triggered saga is derived from
the saga's name, the event's key and an attempt number (a UUID5, see
`derive_saga_id`), and the storage's insert-if-absent (`SagaStorage.start_saga`:
``INSERT ... ON CONFLICT DO NOTHING`` in SQL) is atomic: of 50 concurrent
copies of one event, one inserts the saga and 49 find it. Two saga types never
share an id for the same key, since the name is part of it.

With ``retry_failed=True`` a redelivered key whose saga ended ``failed`` (a
step failed and every compensation ran) starts a new attempt: the next
attempt number, so the next derived id, inserted the same atomic way; so
concurrent redeliveries of a failed key start one new attempt, not several.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import inspect
import json
import typing
import uuid

from cqrs import correlation
from cqrs.saga import _serialization
from cqrs.saga.exceptions import ContextValidationError, SagaError
from cqrs.saga.saga import Saga
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.protocol import SagaStorage
from cqrs.saga.views import saga_view

if typing.TYPE_CHECKING:
    from cqrs.saga.mediator import SagaMediator

__all__ = [
    "TRIGGER_NAMESPACE",
    "AcceptedEvent",
    "AttemptsExhaustedError",
    "EventRejectedError",
    "TriggerError",
    "TriggerRouter",
    "TriggerSpec",
    "TriggeredSaga",
    "UnknownSourceError",
    "derive_saga_id",
    "trigger",
    "triggers_of",
]

#: Namespace of the saga ids derived from idempotency keys (never change it: ids would change).
TRIGGER_NAMESPACE = uuid.UUID("5b0d6a53-3c39-4d7e-9a61-0f1f3f3b6c2e")

#: What a delivery id is prefixed with to serve as the key of a trigger without an idempotency key (so it never
#: derives the id a key of the same text would).
DELIVERY_KEY_PREFIX = "delivery:"

#: Default number of attempts a key may have with ``retry_failed=True``.
DEFAULT_MAX_ATTEMPTS = 10

F = typing.TypeVar("F", bound=typing.Callable[..., typing.Any])
_ATTR = "_cqrs_trigger"


@dataclasses.dataclass(frozen=True)
class TriggerSpec:
    """What `trigger` records on a method."""

    source: str
    idempotency_key: str | None
    retry_failed: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


def trigger(
    source: str,
    idempotency_key: str | None = None,
    *,
    retry_failed: bool = False,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> typing.Callable[[F], F]:
    """Mark a saga method as the handler of events from ``source``.

    The method (sync or async) receives the event, a dict, and returns the
    saga's context (or a dict of its fields, validated into it), or None to
    ignore the event. It may raise `KeyError`/`ValueError`/`TypeError` for an
    event it cannot read: the delivery is refused (`EventRejectedError`; a
    webhook answers 422) and nothing is stored.

    ``idempotency_key`` names the event field that identifies the event (a
    dotted path such as ``"data.id"`` reaches into nested objects); its value
    must be a non-empty string or an integer. The same value starts this saga
    once; an event without it is refused. Without an idempotency key every
    delivery starts a new saga.

    ``retry_failed``: a redelivery of a key whose saga ended ``failed`` starts
    a new attempt, up to ``max_attempts`` attempts per key (then
    `AttemptsExhaustedError`; a webhook answers 409).
    A saga still running, completed, parked or whose compensation failed is
    never started again.
    """
    if not isinstance(source, str) or not source or "/" in source:
        raise ValueError(f"A trigger source must be a non-empty string without '/', got {source!r}")
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key):
        raise ValueError(f"idempotency_key must be a field name, got {idempotency_key!r}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    spec = TriggerSpec(source, idempotency_key, retry_failed, max_attempts)

    def mark(func: F) -> F:
        setattr(func, _ATTR, spec)
        return func

    return mark


@dataclasses.dataclass(frozen=True)
class TriggerBinding:
    """One ``@trigger`` method of one saga class."""

    saga_type: type[Saga[typing.Any]]
    method_name: str
    spec: TriggerSpec

    @property
    def where(self) -> str:
        return f"{self.saga_type.__qualname__}.{self.method_name}"


def triggers_of(saga_type: type[Saga[typing.Any]]) -> list[TriggerBinding]:
    """The ``@trigger`` methods of ``saga_type`` (inherited ones included), by name."""
    found: dict[str, TriggerBinding] = {}
    for klass in reversed(saga_type.__mro__):
        for name, value in vars(klass).items():
            func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            spec = getattr(func, _ATTR, None)
            if isinstance(spec, TriggerSpec):
                found[name] = TriggerBinding(saga_type, name, spec)
            elif name in found:
                del found[name]  # overridden without @trigger
    return list(found.values())


def derive_saga_id(saga_name: str, key: str, attempt: int = 0) -> uuid.UUID:
    """The id of attempt ``attempt`` of saga ``saga_name`` for the idempotency key ``key``.

    ``uuid5(TRIGGER_NAMESPACE, json.dumps([saga_name, key, attempt]))``: stable
    across processes and releases, distinct per saga type, key and attempt
    (the JSON encoding keeps ``("a", "b#1")`` and ``("a#b", "1")`` apart).
    """
    return uuid.uuid5(TRIGGER_NAMESPACE, json.dumps([saga_name, key, attempt], ensure_ascii=False))


# -- answers ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TriggeredSaga:
    """One saga an event started, or had already started (``duplicate``)."""

    saga: str
    saga_id: uuid.UUID
    duplicate: bool
    attempt: int = 0
    correlation_id: str | None = None
    status: SagaStatus = SagaStatus.PENDING

    def as_json(self) -> dict[str, typing.Any]:
        return {
            "saga": self.saga,
            "saga_id": str(self.saga_id),
            "duplicate": self.duplicate,
            "attempt": self.attempt,
            "correlation_id": self.correlation_id,
            "status": self.status.value,
        }


@dataclasses.dataclass(frozen=True)
class AcceptedEvent:
    """The answer to a delivered event.

    ``status`` is ``accepted`` (at least one saga started now), ``duplicate``
    (every saga was started by an earlier delivery; ``correlation_id`` is then
    that delivery's) or ``ignored`` (every trigger returned None).
    """

    source: str
    correlation_id: str
    sagas: list[TriggeredSaga]

    @property
    def started(self) -> list[TriggeredSaga]:
        """The sagas this delivery recorded: the caller runs them in the background."""
        return [s for s in self.sagas if not s.duplicate]

    @property
    def status(self) -> str:
        if not self.sagas:
            return "ignored"
        return "accepted" if self.started else "duplicate"

    def as_json(self) -> dict[str, typing.Any]:
        return {
            "status": self.status,
            "source": self.source,
            "correlation_id": self.correlation_id,
            "sagas": [s.as_json() for s in self.sagas],
        }


# -- refusals --------------------------------------------------------------------------------------


class TriggerError(SagaError):
    """An event was refused; nothing was stored for it."""


class UnknownSourceError(TriggerError, LookupError):
    """No saga has a trigger for this source."""


class EventRejectedError(TriggerError, ValueError):
    """The event cannot be read by a trigger (a missing key, a bad field, ...).

    ``problems`` lists ``{"field", "message"}`` when fields were at fault.
    """

    def __init__(self, message: str, problems: list[dict[str, str]] | None = None) -> None:
        self.problems = problems
        super().__init__(message)


class AttemptsExhaustedError(TriggerError):
    """Every attempt a ``retry_failed`` key may have has failed; it is not started again."""


# -- the router ---------------------------------------------------------------------------------------


class TriggerRouter:
    """Turns events into recorded sagas, whatever delivered them (webhook, broker).

    ``sagas`` are scanned for ``@trigger`` methods; one source may start
    several sagas (one per binding).
    """

    def __init__(self, sagas: typing.Iterable[type[Saga[typing.Any]]]) -> None:
        self._bindings: dict[str, list[TriggerBinding]] = {}
        for saga_type in sagas:
            for binding in triggers_of(saga_type):
                self._bindings.setdefault(binding.spec.source, []).append(binding)

    @property
    def sources(self) -> list[str]:
        return sorted(self._bindings)

    def bindings(self, source: str) -> list[TriggerBinding]:
        """The triggers of ``source``; `UnknownSourceError` if there are none."""
        bindings = self._bindings.get(source)
        if not bindings:
            raise UnknownSourceError(f"Unknown event source {source!r}")
        return bindings

    async def accept(
        self,
        mediator: SagaMediator,
        source: str,
        event: typing.Mapping[str, typing.Any],
        *,
        correlation_id: str | None = None,
        delivery_id: str | None = None,
    ) -> AcceptedEvent:
        """Record the sagas ``event`` starts; run nothing.

        Refusals (`TriggerError`), each raised before anything is stored: an
        unknown source, then the idempotency field and the trigger's context.
        Then each saga is inserted if absent (`derive_saga_id`) as ``pending``
        under this process's lease, before this returns; the caller runs
        `AcceptedEvent.started` in the background. ``correlation_id`` defaults
        to the current one, else a new one.

        ``delivery_id`` is the stable id of the message that carried the event
        (a broker message id, the same on every redelivery): a trigger without
        an idempotency key derives its saga id from it, so a redelivered
        message starts that saga once. Without it (webhooks), every delivery
        to such a trigger starts a new saga.
        """
        bindings = self.bindings(source)
        prepared: list[tuple[TriggerBinding, typing.Any, str | None]] = []
        for binding in bindings:
            key = _idempotency_key(binding, event)
            if key is None and delivery_id:
                key = DELIVERY_KEY_PREFIX + delivery_id
            context = await _context_for(binding, _private_copy(event))  # triggers may not see each other's edits
            if context is not None:
                prepared.append((binding, context, key))
        correlation_id = correlation.accept_correlation_id(correlation_id or correlation.get_correlation_id())
        sagas: list[TriggeredSaga] = []
        for binding, context, key in prepared:
            saga = await self._record(mediator, binding, context, key, correlation_id)
            if saga.duplicate and saga.correlation_id and all(s.duplicate for s in sagas):
                # An earlier delivery of this event got here first: the sagas this one still
                # starts (that one has not reached them yet) join its correlation id.
                correlation_id = saga.correlation_id
            sagas.append(saga)
        return AcceptedEvent(source, correlation_id, sagas)

    async def _record(
        self,
        mediator: SagaMediator,
        binding: TriggerBinding,
        context: typing.Any,
        key: str | None,
        correlation_id: str,
    ) -> TriggeredSaga:
        saga_type, spec = binding.saga_type, binding.spec
        if mediator.saga_map.by_name(saga_type.name) is not saga_type:
            raise RuntimeError(
                f"{saga_type.__qualname__} has triggers but is not among the app's sagas; "
                "register it (SagaConfig(sagas=[...]), CQRS_SAGA['SAGAS']) so it can be run and recovered"
            )
        attempts = spec.max_attempts if spec.retry_failed else 1
        for attempt in range(attempts):
            saga_id = uuid.uuid4() if key is None else derive_saga_id(saga_type.name, key, attempt)
            if await mediator.record(saga_type, context, saga_id, correlation_id=correlation_id):
                return TriggeredSaga(saga_type.name, saga_id, False, attempt, correlation_id)
            existing = await mediator.storage.get_saga(saga_id)
            if existing is None:  # pragma: no cover - rows are never deleted
                raise RuntimeError(f"Saga {saga_id} was neither inserted nor found")
            if not (spec.retry_failed and existing.status == SagaStatus.FAILED):
                return TriggeredSaga(
                    saga_type.name, saga_id, True, attempt, existing.correlation_id, existing.status
                )
        raise AttemptsExhaustedError(
            f"Event key {key!r} of {saga_type.name!r} failed {attempts} times; not starting it again"
        )

    async def status(self, storage: SagaStorage, source: str, correlation_id: str) -> dict[str, typing.Any] | None:
        """The stored state of every saga of ``source`` started under ``correlation_id``; None if none was.

        ``{"source", "correlation_id", "status", "sagas": [...]}``: each saga
        as `cqrs.saga.views.saga_view` shows it. ``status`` sums them up:
        ``completed`` when all completed, ``processing`` while any is pending,
        running or compensating, else ``failed``.
        """
        names = {b.saga_type.name for b in self.bindings(source)}
        records = [
            r for r in await storage.list_sagas(correlation_id=correlation_id, limit=1000) if r.name in names
        ]
        if not records:
            return None
        sagas = [saga_view(r, await storage.get_history(r.saga_id) or []) for r in records]
        statuses = {r.status for r in records}
        if statuses == {SagaStatus.COMPLETED}:
            overall = "completed"
        elif statuses & {SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING}:
            overall = "processing"
        else:
            overall = "failed"
        return {"source": source, "correlation_id": correlation_id, "status": overall, "sagas": sagas}


def _private_copy(event: typing.Mapping[str, typing.Any]) -> dict[str, typing.Any]:
    try:
        return copy.deepcopy(dict(event))
    except RecursionError:
        raise EventRejectedError("The event is nested too deeply to be read") from None


def _idempotency_key(binding: TriggerBinding, event: typing.Mapping[str, typing.Any]) -> str | None:
    path = binding.spec.idempotency_key
    if path is None:
        return None
    value: typing.Any = event.get(path)
    if value is None and "." in path:
        value = event
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if value is None or value == "":
        raise EventRejectedError(f"The event has no idempotency field {path!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EventRejectedError(
            f"The event's idempotency field {path!r} is a {type(value).__name__}, not a string or integer"
        )
    return str(value)


async def _context_for(binding: TriggerBinding, event: dict[str, typing.Any]) -> typing.Any:
    method = getattr(binding.saga_type(), binding.method_name)
    try:
        context = method(event)
        if inspect.isawaitable(context):
            context = await context
    except asyncio.CancelledError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise EventRejectedError(f"{binding.where} could not read the event: {type(error).__name__}: {error}") from None
    if context is None:
        return None
    context_type = binding.saga_type.context_type
    if isinstance(context, typing.Mapping):
        if context_type is None:
            raise TypeError(f"{binding.saga_type.__qualname__} declares no context type")
        try:
            return _serialization.validate_context(context_type, context)
        except ContextValidationError as error:
            raise EventRejectedError(str(error), error.problems) from None
    if context_type is not None and not isinstance(context, context_type):
        raise TypeError(
            f"{binding.where} returned a {type(context).__name__}, not a {context_type.__qualname__}, dict or None"
        )
    return context
