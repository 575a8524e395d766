"""Webhooks: signed HTTP deliveries of events that start sagas (the HTTP side of `cqrs.triggers`).

`TriggerDispatcher` is what the FastAPI router, the Flask blueprint and the
Django URLconf share: it verifies the signature (`SignatureVerifier`),
parses the body, hands the event to the framework-agnostic
`cqrs.triggers.TriggerRouter`, and turns its refusals into `Problem`
answers (401, 404, 413, 400, 422, 409).

Every delivery must be signed: a dispatcher needs a `SignatureVerifier`
(with a non-empty secret). Sources that cannot sign are accepted unsigned
only when listed in ``insecure_unsigned_sources``.
"""

from __future__ import annotations

import hmac
import math
import time
import typing

from cqrs.integrations._requests import Problem, check_text, parse_json_object
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
    `Problem` 401. An empty secret is refused (`ValueError`): it would make
    every signature easy to forge.
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
        if not isinstance(secret, (str, bytes)) or not secret:
            raise ValueError(
                "SignatureVerifier needs a non-empty secret (is the variable it is read from unset?); "
                "to accept a source unsigned, list it in insecure_unsigned_sources instead"
            )
        if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not tolerance > 0:
            raise ValueError(f"tolerance must be a positive number of seconds, got {tolerance!r}")
        if not isinstance(header, str) or not header:
            raise ValueError(f"header must be a header name, got {header!r}")
        if timestamp_header is not None and (not isinstance(timestamp_header, str) or not timestamp_header):
            raise ValueError(f"timestamp_header must be a header name or None, got {timestamp_header!r}")
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
        """Raise `Problem` (401) unless ``headers`` carry a valid, fresh signature of ``body``."""
        sent = _header(headers, self.header)
        if not sent:
            raise Problem(401, f"Missing signature header {self.header}")
        timestamp = None
        if self.timestamp_header is not None:
            timestamp = _header(headers, self.timestamp_header)
            if not timestamp:
                raise Problem(401, f"Missing signature timestamp header {self.timestamp_header}")
            try:
                sent_at = float(timestamp) if len(timestamp) <= 32 else math.nan
            except ValueError:
                raise Problem(401, "The signature timestamp is not a number") from None
            if not math.isfinite(sent_at) or abs(self.clock() - sent_at) > self.tolerance:
                raise Problem(401, "The signature timestamp is outside the allowed window")
        expected = self.sign(body, timestamp).encode()
        prefix = self.algorithm + "="
        candidate = (sent if sent.startswith(prefix) else prefix + sent).encode("utf-8", "replace")
        if not hmac.compare_digest(expected, candidate):
            raise Problem(401, "The signature does not match the body")


def _header(headers: typing.Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


class TriggerDispatcher:
    """Verifies, parses and routes webhook deliveries; every refusal a `Problem`.

    ``sagas`` are scanned for ``@trigger`` methods; ``verifier`` checks every
    delivery's signature; ``max_body_bytes`` caps the body (413). A
    dispatcher without a verifier is refused (`ValueError`) unless
    ``insecure_unsigned_sources`` names the sources it may accept unsigned;
    deliveries to other sources then get 401.
    """

    def __init__(
        self,
        sagas: typing.Iterable[type[Saga[typing.Any]]],
        *,
        verifier: SignatureVerifier | None = None,
        max_body_bytes: int = 1_048_576,
        insecure_unsigned_sources: typing.Iterable[str] = (),
    ) -> None:
        if verifier is not None and not isinstance(verifier, SignatureVerifier):
            raise TypeError(f"verifier must be a SignatureVerifier, got {verifier!r}")
        if isinstance(insecure_unsigned_sources, str):
            raise TypeError("insecure_unsigned_sources is a list of source names, not one string")
        unsigned = frozenset(insecure_unsigned_sources)
        if verifier is None and not unsigned:
            raise ValueError(
                "Webhook deliveries must be signed: give a SignatureVerifier(secret); a source that cannot "
                "sign is accepted unsigned only when listed in insecure_unsigned_sources"
            )
        if not isinstance(max_body_bytes, int) or isinstance(max_body_bytes, bool) or max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be a positive whole number, got {max_body_bytes!r}")
        self.router = TriggerRouter(sagas)
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self.insecure_unsigned_sources = unsigned

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

        Checks, in order, each refusal a `Problem` raised before anything is
        stored: the signature unless the source is an insecure unsigned one
        (401, so an unauthenticated caller learns nothing, not even which
        sources exist), the source (404), the size
        (413), the body being a JSON object (400), the idempotency field and
        the trigger's context (422), a key out of attempts (409).
        """
        if source not in self.insecure_unsigned_sources:
            if self.verifier is None:
                raise Problem(401, "Deliveries to this source must be signed")
            self.verifier.verify(body, headers)
        try:
            self.router.bindings(source)
            event = parse_json_object(body, max_bytes=self.max_body_bytes)
            return await self.router.accept(mediator, source, event, correlation_id=correlation_id)
        except UnknownSourceError as error:
            raise Problem(404, str(error)) from None
        except EventRejectedError as error:
            raise Problem(422, str(error), error.problems) from None
        except AttemptsExhaustedError as error:
            raise Problem(409, str(error)) from None

    async def status(self, storage: SagaStorage, source: str, correlation_id: str) -> dict[str, typing.Any]:
        """The stored state of the sagas ``source``'s event started (see `TriggerRouter.status`); 404 if none."""
        check_text(correlation_id, "the correlation id", status=404)
        try:
            found = await self.router.status(storage, source, correlation_id)
        except UnknownSourceError as error:
            raise Problem(404, str(error)) from None
        if found is None:
            raise Problem(404, f"No saga of source {source!r} was started by event {correlation_id!r}")
        return found
