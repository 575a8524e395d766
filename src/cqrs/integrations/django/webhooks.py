"""Webhook endpoints for Django: start sagas from events (see `cqrs.triggers`).

In ``urls.py``::

    urlpatterns = [..., path("webhooks/", include("cqrs.integrations.django.webhooks"))]

- ``POST webhooks/<source>``: ``202`` with ``{"status", "source",
  "correlation_id", "sagas"}`` once every saga with a ``@trigger(source=...)``
  is recorded (once per idempotency key); they then run in the background on
  the process's saga loop (``wait_for_sagas`` waits for them; ``saga_worker``
  finishes them if the process dies).
- ``GET webhooks/<source>/status/<correlation_id>``: the stored state of every
  saga that event started.

Refusals are JSON ``{"error": ...}``: 401 bad or missing signature, 404 unknown
source or event, 413 body too large, 400 not a JSON object, 422 no idempotency
field or an event the trigger cannot read; nothing is stored.

The sagas are those of ``CQRS_SAGA["SAGAS"]``. Signatures and limits come
from the optional ``CQRS_SAGA_WEBHOOKS`` setting::

    CQRS_SAGA_WEBHOOKS = {
        "SECRET": os.environ["WEBHOOK_SECRET"],     # no SECRET: deliveries are not verified
        "SIGNATURE_HEADER": "X-Signature",          # "sha256=<hex>" or bare hex
        "ALGORITHM": "sha256",
        "TIMESTAMP_HEADER": "X-Signature-Timestamp",  # None: sign the body only, no replay window
        "TOLERANCE": 300,                           # seconds
        "MAX_BODY_BYTES": 1048576,                  # default: CQRS_SAGA["MAX_BODY_BYTES"]
    }

For other options (another verifier, a subset of the sagas), include
``webhook_urlpatterns(verifier=..., sagas=[...])`` instead of this module.
Views are CSRF-exempt: the signature is what authenticates a delivery.
"""

from __future__ import annotations

import threading
import typing

from django.conf import settings as django_settings  # type: ignore[import-untyped]
from django.core.exceptions import (  # type: ignore[import-untyped]
    ImproperlyConfigured,
    RequestDataTooBig,
)
from django.http import JsonResponse  # type: ignore[import-untyped]
from django.urls import re_path  # type: ignore[import-untyped]
from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]

from cqrs.integrations._requests import BadRequest, check_content_length
from cqrs.integrations._webhooks import WebhookEndpoint
from cqrs.integrations.django import _runtime, error_response
from cqrs.integrations.django._settings import setting_values
from cqrs.integrations.webhooks import SignatureVerifier, TriggerDispatcher
from cqrs.saga.saga import Saga
from cqrs.triggers import AcceptedEvent

__all__ = ["SETTING", "urlpatterns", "webhook_urlpatterns"]

#: The Django setting with the webhook options.
SETTING = "CQRS_SAGA_WEBHOOKS"
_KEYS = ("SECRET", "SIGNATURE_HEADER", "ALGORITHM", "TIMESTAMP_HEADER", "TOLERANCE", "MAX_BODY_BYTES")
_DEFAULTS: dict[str, typing.Any] = {
    "SIGNATURE_HEADER": "X-Signature",
    "ALGORITHM": "sha256",
    "TIMESTAMP_HEADER": "X-Signature-Timestamp",
    "TOLERANCE": 300.0,
}

View = typing.Callable[..., typing.Any]


def endpoint_from_settings(raw: typing.Any) -> WebhookEndpoint:
    """A `WebhookEndpoint` from a ``CQRS_SAGA_WEBHOOKS`` dict; `ImproperlyConfigured` names what is wrong."""
    values = setting_values(raw, SETTING)
    unknown = sorted(set(values) - set(_KEYS))
    if unknown:
        raise ImproperlyConfigured(f"Unknown {SETTING} key(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}")
    options = {**_DEFAULTS, **values}
    verifier = None
    if options.get("SECRET"):
        try:
            verifier = SignatureVerifier(
                options["SECRET"],
                header=str(options["SIGNATURE_HEADER"]),
                algorithm=str(options["ALGORITHM"]),
                timestamp_header=options["TIMESTAMP_HEADER"] or None,
                tolerance=float(options["TOLERANCE"]),
            )
        except (TypeError, ValueError) as error:
            raise ImproperlyConfigured(f"{SETTING}: {error}") from error
    limit = options.get("MAX_BODY_BYTES")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ImproperlyConfigured(f"{SETTING}['MAX_BODY_BYTES'] must be a positive integer, got {limit!r}")
    return WebhookEndpoint(verifier=verifier, max_body_bytes=limit)


class _FromSettings:
    """The endpoint of the current ``CQRS_SAGA_WEBHOOKS`` (rebuilt when the setting changes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[typing.Any, WebhookEndpoint] | None = None

    def __call__(self) -> WebhookEndpoint:
        raw = getattr(django_settings, SETTING, None)
        cached = self._cached
        if cached is not None and cached[0] is raw:
            return cached[1]
        with self._lock:
            if self._cached is None or self._cached[0] is not raw:
                self._cached = (raw, endpoint_from_settings(raw))
            return self._cached[1]


def webhook_urlpatterns(
    *,
    sagas: typing.Sequence[type[Saga[typing.Any]]] | None = None,
    verifier: SignatureVerifier | None = None,
    max_body_bytes: int | None = None,
) -> list[typing.Any]:
    """URL patterns like this module's, with these options instead of ``CQRS_SAGA_WEBHOOKS``.

    ``path("hooks/", include(webhook_urlpatterns(verifier=SignatureVerifier(secret))))``.
    ``sagas`` must be listed in ``CQRS_SAGA["SAGAS"]`` too (so ``saga_worker`` can recover them).
    """
    endpoint = WebhookEndpoint(sagas=sagas, verifier=verifier, max_body_bytes=max_body_bytes)
    return _patterns(lambda: endpoint)


def _patterns(endpoint_of: typing.Callable[[], WebhookEndpoint]) -> list[typing.Any]:
    @csrf_exempt  # type: ignore[untyped-decorator]
    def deliver_event(request: typing.Any, source: str) -> JsonResponse:
        if request.method != "POST":
            return _refuse(BadRequest(405, f"Deliver events with POST, not {request.method}"), allow="POST")
        runtime = _runtime.current()
        try:
            dispatcher = endpoint_of().dispatcher(runtime.config)
            limit = dispatcher.max_body_bytes
            check_content_length(request.META.get("CONTENT_LENGTH") or None, max_bytes=limit)
            try:
                body = request.body
            except RequestDataTooBig:
                raise BadRequest(413, f"Request body is larger than the limit of {limit} bytes") from None
            headers = dict(request.headers.items())
            # The request's correlation id comes along in the context (see `LoopThread.submit`).
            accepted = _runtime.block(_accept(runtime, dispatcher, source, body, headers))
        except BadRequest as error:
            return _refuse(error)
        for saga in accepted.started:
            runtime.hand_off(saga.saga_id)
        return JsonResponse(accepted.as_json(), status=202)

    def event_status(request: typing.Any, source: str, correlation_id: str) -> JsonResponse:
        if request.method not in ("GET", "HEAD"):
            return _refuse(BadRequest(405, f"Read the status with GET, not {request.method}"), allow="GET")
        runtime = _runtime.current()
        try:
            dispatcher = endpoint_of().dispatcher(runtime.config)
            return JsonResponse(_runtime.block(_status(runtime, dispatcher, source, correlation_id)))
        except BadRequest as error:
            return _refuse(error)

    return [
        re_path(r"^(?P<source>[^/]+)/status/(?P<correlation_id>.+?)/?$", event_status, name="cqrs-webhook-status"),
        re_path(r"^(?P<source>[^/]+)/?$", deliver_event, name="cqrs-webhook"),
    ]


def _refuse(error: BadRequest, allow: str | None = None) -> JsonResponse:
    response = error_response(error)
    if allow is not None:
        response["Allow"] = allow
    return response


async def _accept(
    runtime: _runtime.SagaRuntime,
    dispatcher: TriggerDispatcher,
    source: str,
    body: bytes,
    headers: dict[str, str],
) -> AcceptedEvent:
    mediator = await runtime.open()
    return await dispatcher.accept(mediator, source, body, headers)


async def _status(
    runtime: _runtime.SagaRuntime, dispatcher: TriggerDispatcher, source: str, correlation_id: str
) -> dict[str, typing.Any]:
    mediator = await runtime.open()
    return await dispatcher.status(mediator.storage, source, correlation_id)


#: ``include("cqrs.integrations.django.webhooks")``: options from ``CQRS_SAGA_WEBHOOKS``.
urlpatterns = _patterns(_FromSettings())
