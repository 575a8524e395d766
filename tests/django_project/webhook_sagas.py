"""Sagas started by webhook events, shared by the trigger and webhook tests of every framework.

``order_created`` starts two sagas (`WebhookOrderSaga` and `WebhookAuditSaga`, both
keyed by ``order_id``), ``payment_due`` starts `WebhookPaymentSaga` (keyed by the
nested ``invoice.id``, retried when it failed). `RUNS` counts step executions per
key so tests can tell that a saga ran once; `FLAKY` makes the payment step fail
a number of times per invoice.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import typing

import cqrs
from cqrs.integrations.webhooks import SignatureVerifier
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.triggers import trigger

_lock = threading.Lock()
RUNS: collections.Counter[tuple[str, str]] = collections.Counter()
FLAKY: dict[str, int] = {}

SECRET = "webhook-test-secret"
VERIFIER = SignatureVerifier(SECRET)

#: Deliveries every framework's webhook view refuses: (source, event or raw body, status, part of the message).
BAD_DELIVERIES: list[tuple[str, typing.Any, int, str]] = [
    ("nope", {"order_id": "O-1", "amount": 1}, 404, "Unknown event source"),
    ("order_created", b"{not json", 400, "not valid JSON"),
    ("order_created", b'"a string"', 400, "must be a JSON object"),
    ("order_created", b"7", 400, "must be a JSON object"),
    ("order_created", {"amount": 1}, 422, "idempotency field 'order_id'"),
    ("order_created", {"order_id": "O-1"}, 422, "could not read the event"),
    ("order_created", b"{" + b" " * 5000 + b"}", 413, "limit"),
]


def forged_signatures(raw: bytes) -> list[dict[str, str]]:
    """Signature headers for ``raw`` that a webhook view must refuse with 401: none, a wrong one, a
    replayed one (an old timestamp), a timestamp not the one signed, and a signature without its timestamp."""
    good = VERIFIER.headers(raw)
    return [
        {},
        {**good, "X-Signature": "sha256=" + "0" * 64},
        {"X-Signature": VERIFIER.sign(raw, "1000"), "X-Signature-Timestamp": "1000"},
        {**good, "X-Signature-Timestamp": str(int(good["X-Signature-Timestamp"]) + 1)},
        {"X-Signature": good["X-Signature"]},
    ]


def ran(step: str, key: str) -> None:
    with _lock:
        RUNS[(step, key)] += 1


def reset() -> None:
    with _lock:
        RUNS.clear()
        FLAKY.clear()


# -- order_created: an order saga (may fail and compensate) and an audit saga ----------------------


@dataclasses.dataclass
class WebhookOrderContext(SagaContext):
    order_id: str
    amount: float
    fail: bool = False
    reservation_id: str | None = None


class Reserved(cqrs.Response):
    reservation_id: str


class Charged(cqrs.Response):
    charged: float


class PaymentRefused(Exception):
    pass


class Reserve(SagaStepHandler[WebhookOrderContext, Reserved]):
    name = "reserve"

    async def act(self, context: WebhookOrderContext) -> SagaStepResult[WebhookOrderContext, Reserved]:
        ran("reserve", context.order_id)
        context.reservation_id = f"res-{context.order_id}"
        return self._generate_step_result(Reserved(reservation_id=context.reservation_id))

    async def compensate(self, context: WebhookOrderContext) -> None:
        ran("unreserve", context.order_id)


class Charge(SagaStepHandler[WebhookOrderContext, Charged]):
    name = "charge"

    async def act(self, context: WebhookOrderContext) -> SagaStepResult[WebhookOrderContext, Charged]:
        ran("charge", context.order_id)
        if context.fail:
            raise PaymentRefused(f"card refused for {context.order_id}")
        return self._generate_step_result(Charged(charged=context.amount))


class WebhookOrderSaga(Saga[WebhookOrderContext]):
    name = "webhook_order"
    steps = [Reserve, Charge]

    @trigger(source="order_created", idempotency_key="order_id")
    def from_order_created(self, event: dict[str, typing.Any]) -> dict[str, typing.Any] | None:
        if event.get("test_event"):
            return None  # the sender's "ping": nothing to do
        return {"order_id": event["order_id"], "amount": event["amount"], "fail": event.get("fail", False)}


@dataclasses.dataclass
class AuditContext(SagaContext):
    order_id: str
    note: str = ""


class Noted(cqrs.Response):
    note: str


class Note(SagaStepHandler[AuditContext, Noted]):
    name = "note"

    async def act(self, context: AuditContext) -> SagaStepResult[AuditContext, Noted]:
        ran("note", context.order_id)
        return self._generate_step_result(Noted(note=context.note))


class WebhookAuditSaga(Saga[AuditContext]):
    name = "webhook_audit"
    steps = [Note]

    @trigger(source="order_created", idempotency_key="order_id")
    async def audit(self, event: dict[str, typing.Any]) -> AuditContext | None:
        if event.get("test_event"):
            return None
        return AuditContext(order_id=str(event["order_id"]), note=f"order of {event['amount']}")


# -- payment_due: retried when it failed ----------------------------------------------------------


@dataclasses.dataclass
class InvoiceContext(SagaContext):
    invoice_id: str
    amount: float


class Paid(cqrs.Response):
    invoice_id: str


class Collect(SagaStepHandler[InvoiceContext, Paid]):
    name = "collect"

    async def act(self, context: InvoiceContext) -> SagaStepResult[InvoiceContext, Paid]:
        ran("collect", context.invoice_id)
        with _lock:
            left = FLAKY.get(context.invoice_id, 0)
            if left:
                FLAKY[context.invoice_id] = left - 1
        if left:
            raise PaymentRefused(f"bank unavailable for {context.invoice_id}")
        return self._generate_step_result(Paid(invoice_id=context.invoice_id))


class WebhookPaymentSaga(Saga[InvoiceContext]):
    name = "webhook_payment"
    steps = [Collect]

    @trigger(source="payment_due", idempotency_key="invoice.id", retry_failed=True, max_attempts=3)
    def from_payment_due(self, event: dict[str, typing.Any]) -> InvoiceContext:
        invoice = event["invoice"]
        return InvoiceContext(invoice_id=str(invoice["id"]), amount=invoice["amount"])


SAGAS = [WebhookOrderSaga, WebhookAuditSaga, WebhookPaymentSaga]
SAGA_PATHS = [f"{__name__}.{saga.__name__}" for saga in SAGAS]
