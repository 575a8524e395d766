"""Event triggers: start sagas from incoming events (webhooks), idempotently and authenticated.

Declare on a saga a method that turns an event into the saga's context::

    class OrderSaga(Saga[OrderContext]):
        steps = [...]

        @trigger(source="order_created", idempotency_key="order_id")
        def from_order_created(self, event: dict) -> OrderContext | None:
            return OrderContext(order_id=event["order_id"], amount=event["amount"])

`TriggerDispatcher` is the framework-agnostic core behind the FastAPI router,
the Flask blueprint and the Django URLconf: it verifies the signature, parses
the body, records every saga the event starts (before the caller answers),
and tells the caller which ones to run in the background.

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
import hmac
import inspect
import json
import math
import time
import typing
import uuid

from cqrs import correlation
from cqrs.integrations._requests import BadRequest, build_context, parse_json_object
from cqrs.integrations._status import status_body
from cqrs.saga import _serialization
from cqrs.saga.saga import Saga
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.protocol import SagaStorage

if typing.TYPE_CHECKING:
    from cqrs.saga.mediator import SagaMediator

__all__ = [
    "TRIGGER_NAMESPACE",
    "AcceptedEvent",
    "SignatureVerifier",
    "TriggerDispatcher",
    "TriggerSpec",
    "TriggeredSaga",
    "derive_saga_id",
    "trigger",
    "triggers_of",
]

#: Namespace of the saga ids derived from idempotency keys (never change it: ids would change).
TRIGGER_NAMESPACE = uuid.UUID("5b0d6a53-3c39-4d7e-9a61-0f1f3f3b6c2e")

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
    event it cannot read: the delivery is answered 422 and nothing is stored.

    ``idempotency_key`` names the event field that identifies the event (a
    dotted path such as ``"data.id"`` reaches into nested objects); its value
    must be a non-empty string or an integer. The same value starts this saga
    once; an event without it is refused (422). Without an idempotency key
    every delivery starts a new saga.

    ``retry_failed``: a redelivery of a key whose saga ended ``failed`` starts
    a new attempt, up to ``max_attempts`` attempts per key (then 409).
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


# -- signatures ------------------------------------------------------------------------------------


class SignatureVerifier:
    """HMAC verification of a webhook's raw body, with a shared secret.

    The sender computes ``hex(HMAC(secret, timestamp + "." + body))`` with
    ``algorithm`` and sends it in the ``header`` header (as ``"<algorithm>=<hex>"``
    or bare hex), and the timestamp (Unix seconds) in ``timestamp_header``.
    Deliveries whose timestamp is more than ``tolerance`` seconds away from
    now are refused, so a captured request cannot be replayed later. With
    ``timestamp_header=None`` only the body is signed (no replay window).
    Comparison is constant-time (`hmac.compare_digest`). Every failure is a
    `BadRequest` 401.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        header: str = "X-Signature",
        algorithm: str = "sha256",
        timestamp_header: str | None = "X-Signature-Timestamp",
        tolerance: float = 300.0,
        clock: typing.Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("SignatureVerifier needs a non-empty secret")
        try:
            hmac.new(b"k", b"m", algorithm).hexdigest()
        except (ValueError, TypeError):
            raise ValueError(f"{algorithm!r} is not an HMAC algorithm hashlib offers") from None
        self.secret = secret.encode() if isinstance(secret, str) else bytes(secret)
        self.header = header
        self.algorithm = algorithm
        self.timestamp_header = timestamp_header
        self.tolerance = tolerance
        self.clock = clock

    def sign(self, body: bytes, timestamp: str | int | None = None) -> str:
        """The signature header value for ``body`` (what a sender computes)."""
        message = body if timestamp is None else str(timestamp).encode() + b"." + body
        return f"{self.algorithm}={hmac.new(self.secret, message, self.algorithm).hexdigest()}"

    def headers(self, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        """The headers a sender adds to ``body`` (signature, and timestamp if used); for tests and clients."""
        if self.timestamp_header is None:
            return {self.header: self.sign(body)}
        stamp = str(int(self.clock()) if timestamp is None else timestamp)
        return {self.header: self.sign(body, stamp), self.timestamp_header: stamp}

    def verify(self, body: bytes, headers: typing.Mapping[str, str]) -> None:
        """Raise `BadRequest` (401) unless ``headers`` carry a valid, fresh signature of ``body``."""
        sent = _header(headers, self.header)
        if not sent:
            raise BadRequest(401, f"Missing signature header {self.header}")
        timestamp = None
        if self.timestamp_header is not None:
            timestamp = _header(headers, self.timestamp_header)
            if not timestamp:
                raise BadRequest(401, f"Missing signature timestamp header {self.timestamp_header}")
            try:
                sent_at = float(timestamp)
            except ValueError:
                raise BadRequest(401, "The signature timestamp is not a number") from None
            if not math.isfinite(sent_at) or abs(self.clock() - sent_at) > self.tolerance:
                raise BadRequest(401, "The signature timestamp is outside the allowed window")
        expected = self.sign(body, timestamp).encode()
        prefix = self.algorithm + "="
        candidate = (sent if sent.startswith(prefix) else prefix + sent).encode("utf-8", "replace")
        if not hmac.compare_digest(expected, candidate):
            raise BadRequest(401, "The signature does not match the body")


def _header(headers: typing.Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


# -- the dispatcher ------------------------------------------------------------------------------------


class TriggerDispatcher:
    """Turns delivered events into recorded sagas: the core of every webhook endpoint.

    ``sagas`` are scanned for ``@trigger`` methods; one source may start
    several sagas (one per binding). ``verifier`` (optional) checks every
    delivery's signature; ``max_body_bytes`` caps the body (413).
    """

    def __init__(
        self,
        sagas: typing.Iterable[type[Saga[typing.Any]]],
        *,
        verifier: SignatureVerifier | None = None,
        max_body_bytes: int = 1_048_576,
    ) -> None:
        self._bindings: dict[str, list[TriggerBinding]] = {}
        for saga_type in sagas:
            for binding in triggers_of(saga_type):
                self._bindings.setdefault(binding.spec.source, []).append(binding)
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes

    @property
    def sources(self) -> list[str]:
        return sorted(self._bindings)

    def bindings(self, source: str) -> list[TriggerBinding]:
        """The triggers of ``source``; `BadRequest` 404 if there are none."""
        bindings = self._bindings.get(source)
        if not bindings:
            raise BadRequest(404, f"Unknown event source {source!r}")
        return bindings

    async def accept(
        self,
        mediator: SagaMediator,
        source: str,
        body: bytes,
        headers: typing.Mapping[str, str],
        *,
        correlation_id: str | None = None,
    ) -> AcceptedEvent:
        """Verify and parse ``body``, and record the sagas it starts; run nothing.

        Checks, in order, each refusal a `BadRequest` raised before anything is
        stored: the signature (401, so an unauthenticated caller learns
        nothing, not even which sources exist), the source (404), the size
        (413), the body being a JSON object (400), the idempotency field and
        the trigger's context (422). Then each saga is inserted if absent
        (`derive_saga_id`) as ``pending`` under this process's lease, before
        this returns. The caller runs `AcceptedEvent.started` in the background.
        ``correlation_id`` defaults to the current one (the request's), else a new one.
        """
        if self.verifier is not None:
            self.verifier.verify(body, headers)
        bindings = self.bindings(source)
        event = parse_json_object(body, max_bytes=self.max_body_bytes)
        prepared: list[tuple[TriggerBinding, typing.Any, str | None]] = []
        for binding in bindings:
            key = _idempotency_key(binding, event)
            context = await _context_for(binding, copy.deepcopy(event))  # triggers may not see each other's edits
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
        storage = mediator.storage
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
            existing = await storage.get_saga(saga_id)
            if existing is None:  # pragma: no cover - rows are never deleted
                raise RuntimeError(f"Saga {saga_id} was neither inserted nor found")
            if not (spec.retry_failed and existing.status == SagaStatus.FAILED):
                return TriggeredSaga(
                    saga_type.name, saga_id, True, attempt, existing.correlation_id, existing.status
                )
        raise BadRequest(
            409,
            f"Event key {key!r} of {saga_type.name!r} failed {attempts} times; not starting it again",
        )

    async def status(self, storage: SagaStorage, source: str, correlation_id: str) -> dict[str, typing.Any]:
        """The stored state of every saga of ``source`` started under ``correlation_id``.

        ``{"source", "correlation_id", "status", "sagas": [...]}``: each saga as
        the status routes show it (status, completed steps with their
        responses, compensated steps, failed step, error, context). ``status``
        sums them up: ``completed`` when all completed, ``processing`` while
        any is pending, running or compensating, else ``failed``. 404 when
        the event started no saga of ``source``.
        """
        names = {b.saga_type.name for b in self.bindings(source)}
        records = [
            r for r in await storage.list_sagas(correlation_id=correlation_id, limit=1000) if r.name in names
        ]
        if not records:
            raise BadRequest(404, f"No saga of source {source!r} was started by event {correlation_id!r}")
        sagas = [status_body(r, await storage.get_history(r.saga_id) or []) for r in records]
        statuses = {r.status for r in records}
        if statuses == {SagaStatus.COMPLETED}:
            overall = "completed"
        elif statuses & {SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING}:
            overall = "processing"
        else:
            overall = "failed"
        return {"source": source, "correlation_id": correlation_id, "status": overall, "sagas": sagas}


def _idempotency_key(binding: TriggerBinding, event: dict[str, typing.Any]) -> str | None:
    path = binding.spec.idempotency_key
    if path is None:
        return None
    value: typing.Any = event.get(path)
    if value is None and "." in path:
        value = event
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if value is None or value == "":
        raise BadRequest(422, f"The event has no idempotency field {path!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRequest(
            422, f"The event's idempotency field {path!r} is a {type(value).__name__}, not a string or integer"
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
        raise BadRequest(
            422, f"{binding.where} could not read the event: {type(error).__name__}: {error}"
        ) from None
    if context is None:
        return None
    context_type = binding.saga_type.context_type
    if isinstance(context, typing.Mapping):
        if context_type is None:
            raise TypeError(f"{binding.saga_type.__qualname__} declares no context type")
        try:
            return build_context(context_type, context)
        except BadRequest as error:
            raise BadRequest(422, error.message, error.details) from None
    if context_type is not None and not isinstance(context, context_type):
        raise TypeError(
            f"{binding.where} returned a {type(context).__name__}, not a {context_type.__qualname__}, dict or None"
        )
    return context
