"""URLs of the orders example."""

from __future__ import annotations

from django.urls import include, path
from orders import views

urlpatterns = [
    path("health/", views.health, name="health"),
    path("orders/", include("orders.urls")),
]
