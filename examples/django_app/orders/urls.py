"""``/orders/...``."""

from __future__ import annotations

from django.urls import path

from orders import views

urlpatterns = [
    path("", views.create_order, name="create-order"),
    path("<str:saga_id>/", views.order_status, name="order-status"),
    path("<str:saga_id>/diagram/", views.order_diagram, name="order-diagram"),
]
