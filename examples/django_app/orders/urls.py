"""``/orders``, ``/orders/wait``, ``/orders/stream``."""

from __future__ import annotations

from django.urls import path

from orders import views

urlpatterns = [
    path("orders", views.create_order, name="create-order"),
    path("orders/wait", views.run_order, name="run-order"),
    path("orders/stream", views.stream_order, name="stream-order"),
]
