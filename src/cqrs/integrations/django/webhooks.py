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

Refusals are problem details (``application/problem+json``): 401 bad or
missing signature, 404 unknown source or event, 413 body too large, 400 not a
JSON object, 422 no idempotency field or an event the trigger cannot read;
nothing is stored.

The sagas are those of ``CQRS_SAGA["SAGAS"]``. Signatures and limits come
from the optional ``CQRS_SAGA_WEBHOOKS`` setting::

    CQRS_SAGA_WEBHOOKS = {
        "SECRET": os.environ["WEBHOOK_SECRET"],     # required (empty is an error)
        "SIGNATURE_HEADER": "X-Signature",          # "sha256=<hex>" or bare hex
        "ALGORITHM": "sha256",
        "TIMESTAMP_HEADER": "X-Signature-Timestamp",  # None: sign the body only, no replay window
        "TOLERANCE": 300,                           # seconds
        "MAX_BODY_BYTES": 1048576,                  # default: CQRS_SAGA["MAX_BODY_BYTES"]
        # "INSECURE_UNSIGNED_SOURCES": ["legacy_feed"],  # accepted WITHOUT a signature
    }

A missing or empty ``SECRET``, an unknown key or a value of the wrong type is
an error at start-up and in ``manage.py check``, naming it.

For other options (another verifier, a subset of the sagas), include
``webhook_routes(verifier=..., sagas=[...])`` instead of this module.
Views are CSRF-exempt: the signature is what authenticates a delivery.
"""

from __future__ import annotations

import threading
import typing

import typing_extensions
from django.conf import settings as django_settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.urls import re_path  # type: ignore[import-untyped]
from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]

from cqrs.integrations._webhooks import WebhookEndpoint, WebhookOptions
from cqrs.integrations.django import _api, _body, allow, django_path, render
from cqrs.integrations.django._settings import load_webhooks

__all__ = ["SETTING", "urlpatterns", "webhook_routes"]  # noqa: F822  (urlpatterns: see __getattr__)

#: The Django setting with the webhook options.
SETTING = "CQRS_SAGA_WEBHOOKS"


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
                endpoint = load_webhooks(raw)
                if endpoint is None:
                    raise ImproperlyConfigured(
                        f"{SETTING} is not set: the webhook URLs need its SECRET (deliveries are verified), "
                        "or INSECURE_UNSIGNED_SOURCES for sources that cannot sign"
                    )
                self._cached = (raw, endpoint)
            return self._cached[1]


def webhook_routes(*, prefix: str = "", **options: typing_extensions.Unpack[WebhookOptions]) -> list[typing.Any]:
    """URL patterns like this module's, with ``options`` (those of `WebhookEndpoint`) instead of
    ``CQRS_SAGA_WEBHOOKS``: ``path("hooks/", include(webhook_routes(verifier=SignatureVerifier(secret))))``.

    ``sagas`` must be listed in ``CQRS_SAGA["SAGAS"]`` too (so ``saga_worker`` can recover them).
    """
    endpoint = WebhookEndpoint(**options)
    return _patterns(lambda: endpoint, prefix)


def _patterns(endpoint_of: typing.Callable[[], WebhookEndpoint], prefix: str = "") -> list[typing.Any]:
    @csrf_exempt  # type: ignore[untyped-decorator]
    def deliver_event(request: typing.Any, source: str) -> typing.Any:
        refused = allow("POST", request)
        if refused is not None:
            return refused
        headers = dict(request.headers.items())
        return render(_api.deliver(endpoint_of(), source, lambda limit: _body(request, limit), headers))

    def event_status(request: typing.Any, source: str, correlation_id: str) -> typing.Any:
        return allow("GET", request) or render(_api.event_status(endpoint_of(), source, correlation_id))

    return [
        re_path(django_path(prefix, "/{source}/status/{correlation_id}"), event_status, name="cqrs-webhook-status"),
        re_path(django_path(prefix, "/{source}"), deliver_event, name="cqrs-webhook"),
    ]


_from_settings = _FromSettings()


def __getattr__(name: str) -> typing.Any:
    """``urlpatterns``, for ``include("cqrs.integrations.django.webhooks")``: options from ``CQRS_SAGA_WEBHOOKS``.

    Read when the URLconf loads (at start-up, and in ``manage.py check``), so
    a missing or invalid setting stops the start instead of failing deliveries.
    """
    if name == "urlpatterns":
        _from_settings()
        return _patterns(_from_settings)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
