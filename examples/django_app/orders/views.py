"""The orders API: the same service as the FastAPI and Flask examples.

- ``POST /orders``: validate the body, create the Order row and start its
  saga in one transaction (202 with the saga id; problem details naming the
  bad field, with nothing written; 409 for an order id already used);
- ``POST /orders/wait``: the same, then wait for the saga's end (202 with
  the status link if it takes longer than ``WAIT_SECONDS``);
- ``POST /orders/stream``: the same, streaming the saga's progress as Server-Sent Events;
- the operator routes (``/sagas``, ``/sagas/<id>``, ``/history``, ``/diagram``)
  and ``/health`` come from the integration (see ``config/urls.py``).

`Problem` errors raised here (by ``read_saga_context`` and below) are
answered as problem details by ``CorrelationIdMiddleware``.
"""

from __future__ import annotations

import decimal
import functools
import typing
import uuid

from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from cqrs.integrations import django as sagas
from orders.models import Order
from orders.sagas import OrderContext, OrderRequest, OrderSaga

#: How long ``POST /orders/wait`` waits before answering 202 with the status link.
WAIT_SECONDS = 10.0
#: Saga ids are derived from order ids in this namespace: one saga per order.
ORDER_NAMESPACE = uuid.UUID("6f1d3c64-2b0e-4d4a-9a57-0b6c1f0e8e21")


def order_saga_id(order_id: str) -> uuid.UUID:
    """The saga id of an order: the same order id always names the same saga."""
    return uuid.uuid5(ORDER_NAMESPACE, order_id)


def _order(request: HttpRequest) -> tuple[OrderRequest, OrderContext, uuid.UUID]:
    body = sagas.read_saga_context(request, OrderRequest)
    return body, OrderContext.from_request(body), order_saga_id(body.order_id)


def _create_row(request: HttpRequest, body: OrderRequest, saga_id: uuid.UUID) -> None:
    Order.objects.create(
        order_id=body.order_id,
        user_id=body.user_id,
        items=[item.model_dump() for item in body.items],
        amount=decimal.Decimal(str(body.amount)).quantize(decimal.Decimal("0.01")),
        saga_id=saga_id,
        correlation_id=getattr(request, "correlation_id", ""),
    )


def _conflict(body: OrderRequest) -> sagas.Problem:
    return sagas.Problem(409, f"Order {body.order_id!r} already exists")


def post_only(view: typing.Callable[[HttpRequest], HttpResponse]) -> typing.Callable[[HttpRequest], HttpResponse]:
    """Only POST (405 problem details otherwise); CSRF-exempt, as the API takes JSON from any client."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            raise sagas.Problem(405, f"Use POST, not {request.method}", headers={"Allow": "POST"})
        return view(request)

    return csrf_exempt(wrapper)


@post_only
def create_order(request: HttpRequest) -> HttpResponse:
    body, context, saga_id = _order(request)
    try:
        with transaction.atomic():
            _create_row(request, body, saga_id)
            # Same transaction: the saga exists if and only if the order does.
            sagas.atomic_saga_start(OrderSaga, context, saga_id=saga_id)
    except IntegrityError:
        raise _conflict(body) from None
    status_url = f"/sagas/{saga_id}"
    response = JsonResponse(
        {"order_id": body.order_id, "saga_id": str(saga_id), "status": "accepted", "status_url": status_url},
        status=202,
    )
    response["Location"] = status_url
    return response


@post_only
def run_order(request: HttpRequest) -> HttpResponse:
    body, context, saga_id = _order(request)
    try:
        _create_row(request, body, saga_id)  # committed on its own: the saga then runs outside any transaction
    except IntegrityError:
        raise _conflict(body) from None
    result: typing.Any = sagas.run_saga(context, saga_id=saga_id, timeout=WAIT_SECONDS)
    return JsonResponse({"order_id": body.order_id, **result.to_dict()})


@post_only
def stream_order(request: HttpRequest) -> HttpResponse:
    body, context, saga_id = _order(request)
    try:
        _create_row(request, body, saga_id)
    except IntegrityError:
        raise _conflict(body) from None
    return sagas.saga_event_stream(context, saga_id=saga_id)  # type: ignore[no-any-return]
