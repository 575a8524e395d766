"""The order row a request creates, in the same transaction as its saga."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    order_id = models.CharField(max_length=64, unique=True)
    user_id = models.CharField(max_length=64)
    items = models.JSONField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    saga_id = models.UUIDField(unique=True)
    correlation_id = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"order {self.order_id} (saga {self.saga_id})"
