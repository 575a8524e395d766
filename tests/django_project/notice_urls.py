"""URLs of the start-path and operator-action tests: a webhook for the notice saga, and operator routes
whose actions an ``X-Operator: yes`` header authorises."""

from __future__ import annotations

import typing

from django.urls import include, path

from cqrs.integrations import django as sagas
from cqrs.integrations.django.webhooks import webhook_routes
from django_project.notice_sagas import NoticeSaga


def operator_header(request: typing.Any, action: sagas.OperatorAction) -> bool:
    return bool(request.headers.get("X-Operator") == "yes")


urlpatterns = [
    path("hooks/", include(webhook_routes(sagas=[NoticeSaga], insecure_unsigned_sources=["notice"]))),
    *sagas.operator_routes(prefix="/ops", health=None, authorize=operator_header),
]
