"""URLs of the orders example: the orders API and the integration's read-only operator routes."""

from __future__ import annotations

from django.urls import include, path

from cqrs.integrations import django as sagas

urlpatterns = [
    path("", include("orders.urls")),
    *sagas.operator_routes(),  # /sagas, /sagas/<id>, /sagas/<id>/history, /sagas/<id>/diagram, /health
]
