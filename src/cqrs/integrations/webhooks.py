"""Webhooks: signed HTTP deliveries of events that start sagas (the HTTP side of `cqrs.triggers`).

`TriggerDispatcher` is what the FastAPI router, the Flask blueprint and the
Django URLconf share: it verifies the signature (`SignatureVerifier`),
parses the body, hands the event to the framework-agnostic
`cqrs.triggers.TriggerRouter`, and turns its refusals into `BadRequest`
answers (401, 404, 413, 400, 422, 409).
"""

from __future__ import annotations

import hmac
import math
import time
import typing

from cqrs.integrations._requests import BadRequest, parse_json_object
from cqrs.saga.saga import Saga
from cqrs.saga.storage.protocol import SagaStorage
from cqrs.triggers import (
    AcceptedEvent,
    AttemptsExhaustedError,
    EventRejectedError,
    TriggerRouter,
    UnknownSourceError,
)

if typing.TYPE_CHECKING:
    from cqrs.saga.mediator import SagaMediator

__all__ = ["SignatureVerifier", "TriggerDispatcher"]


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


class TriggerDispatcher:
    """Verifies, parses and routes webhook deliveries; every refusal a `BadRequest`.

    ``sagas`` are scanned for ``@trigger`` methods; ``verifier`` (optional)
    checks every delivery's signature; ``max_body_bytes`` caps the body (413).
    """

    def __init__(
        self,
        sagas: typing.Iterable[type[Saga[typing.Any]]],
        *,
        verifier: SignatureVerifier | None = None,
        max_body_bytes: int = 1_048_576,
    ) -> None:
        self.router = TriggerRouter(sagas)
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes

    @property
    def sources(self) -> list[str]:
        return self.router.sources

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
        the trigger's context (422), a key out of attempts (409).
        """
        if self.verifier is not None:
            self.verifier.verify(body, headers)
        try:
            self.router.bindings(source)
            event = parse_json_object(body, max_bytes=self.max_body_bytes)
            return await self.router.accept(mediator, source, event, correlation_id=correlation_id)
        except UnknownSourceError as error:
            raise BadRequest(404, str(error)) from None
        except EventRejectedError as error:
            raise BadRequest(422, str(error), error.problems) from None
        except AttemptsExhaustedError as error:
            raise BadRequest(409, str(error)) from None

    async def status(self, storage: SagaStorage, source: str, correlation_id: str) -> dict[str, typing.Any]:
        """The stored state of the sagas ``source``'s event started (see `TriggerRouter.status`); 404 if none."""
        try:
            found = await self.router.status(storage, source, correlation_id)
        except UnknownSourceError as error:
            raise BadRequest(404, str(error)) from None
        if found is None:
            raise BadRequest(404, f"No saga of source {source!r} was started by event {correlation_id!r}")
        return found
