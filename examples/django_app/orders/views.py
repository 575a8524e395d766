"""The orders API.

- ``POST /orders/``: validate the body, create the Order row and start its
  saga in one transaction (202 with the saga id; 400 naming the bad field,
  with nothing written; 409 for an order id already used);
- ``GET /orders/<saga_id>/``: the saga's status (an async view);
- ``GET /orders/<saga_id>/diagram/``: its Mermaid diagram (``?format=json`` for JSON);
- ``GET /health/``.
"""

from __future__ import annotations

import decimal
import typing
import uuid

import pydantic
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from cqrs.integrations import django as sagas
from orders.models import Order
from orders.sagas import OrderContext, OrderItem, OrderSaga


class OrderItemIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="forbid")

    id: str = pydantic.Field(min_length=1, max_length=64)
    name: str = pydantic.Field(min_length=1, max_length=200)
    quantity: int = pydantic.Field(ge=1, le=10_000)


class CreateOrder(pydantic.BaseModel):
    """The body of ``POST /orders/``; strict: ``"99.99"`` is not an amount."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")

    order_id: str = pydantic.Field(min_length=1, max_length=64)
    user_id: str = pydantic.Field(min_length=1, max_length=64)
    items: list[OrderItemIn] = pydantic.Field(min_length=1, max_length=100)
    amount: float = pydantic.Field(gt=0, le=1_000_000, allow_inf_nan=False)


def health(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    names = [saga_type.name for saga_type in sagas.get_saga_config().saga_map.sagas()]
    return JsonResponse({"status": "ok", "sagas": names})


@csrf_exempt
def create_order(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        body = sagas.read_saga_context(request, CreateOrder)
    except sagas.BadRequest as error:
        return sagas.error_response(error)
    context = OrderContext(
        order_id=body.order_id,
        user_id=body.user_id,
        items=[OrderItem(id=item.id, name=item.name, quantity=item.quantity) for item in body.items],
        amount=body.amount,
    )
    saga_id = uuid.uuid4()
    try:
        with transaction.atomic():
            Order.objects.create(
                order_id=body.order_id,
                user_id=body.user_id,
                items=[item.model_dump() for item in body.items],
                amount=decimal.Decimal(str(body.amount)).quantize(decimal.Decimal("0.01")),
                saga_id=saga_id,
                correlation_id=getattr(request, "correlation_id", ""),
            )
            # Same transaction: the saga exists if and only if the order does.
            sagas.atomic_saga_start(OrderSaga, context, saga_id=saga_id)
    except IntegrityError:
        return JsonResponse({"error": f"Order {body.order_id!r} already exists"}, status=409)
    return JsonResponse(
        {
            "order_id": body.order_id,
            "saga_id": str(saga_id),
            "status": "accepted",
            "status_url": f"/orders/{saga_id}/",
            "diagram_url": f"/orders/{saga_id}/diagram/",
        },
        status=202,
    )


async def order_status(request: HttpRequest, saga_id: str) -> HttpResponse:
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    try:
        status: dict[str, typing.Any] = await sagas.asaga_status(saga_id)
    except sagas.BadRequest as error:
        return sagas.error_response(error)
    return JsonResponse(status)


def order_diagram(request: HttpRequest, saga_id: str) -> HttpResponse:
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    try:
        diagram = sagas.saga_diagram(saga_id)
    except sagas.BadRequest as error:
        return sagas.error_response(error)
    if request.GET.get("format") == "json":
        return JsonResponse({"saga_id": saga_id, "diagram": diagram})
    return HttpResponse(diagram, content_type="text/plain; charset=utf-8")
