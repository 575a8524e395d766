"""URLs of the webhook tests: the integration's URLconf as a user includes it, plus a customised one."""

from __future__ import annotations

from django.urls import include, path

from cqrs.integrations.django.webhooks import webhook_routes
from django_project.webhook_sagas import WebhookPaymentSaga

urlpatterns = [
    # options from settings.CQRS_SAGA_WEBHOOKS
    path("webhooks/", include("cqrs.integrations.django.webhooks")),
    # options given in code: only the payment saga, its source accepted unsigned
    path("open-hooks/", include(webhook_routes(sagas=[WebhookPaymentSaga], insecure_unsigned_sources=["payment_due"]))),
]
