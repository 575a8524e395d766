"""The framework-agnostic trigger core: @trigger, derived ids, signatures, the dispatcher.

The dispatcher runs against real storages (memory, SQLite, PostgreSQL): the
idempotency it promises is the storage's atomic insert-if-absent.
"""

from __future__ import annotations

import asyncio
import json
import typing
import uuid

import di
import pytest

from cqrs.config import SagaConfig, open_storage
from cqrs.integrations._requests import Problem
from cqrs.integrations.webhooks import SignatureVerifier, TriggerDispatcher
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.storage.enums import SagaStatus
from cqrs.triggers import derive_saga_id, trigger, triggers_of
from django_project import webhook_sagas
from django_project.webhook_sagas import SAGAS, WebhookAuditSaga, WebhookOrderSaga, WebhookPaymentSaga


@pytest.fixture(autouse=True)
def _reset() -> None:
    webhook_sagas.reset()


#: The routing tests take deliveries unsigned (signatures have their own tests).
UNSIGNED: dict[str, typing.Any] = {"insecure_unsigned_sources": ["order_created", "payment_due", "nope"]}


def test_a_dispatcher_without_a_verifier_or_named_unsigned_sources_is_refused() -> None:
    with pytest.raises(ValueError, match="must be signed"):
        TriggerDispatcher(SAGAS)
    with pytest.raises(ValueError, match="non-empty secret"):
        SignatureVerifier("")
    with pytest.raises(TypeError, match="not one string"):
        TriggerDispatcher(SAGAS, insecure_unsigned_sources="order_created")


@pytest.fixture
async def mediator(storage_url: str) -> typing.AsyncIterator[SagaMediator]:
    url = storage_url
    config = SagaConfig(storage_url=url, sagas=SAGAS, container=di.Container(), compensation_retry_delay=0.0)
    storage = await open_storage(url)
    try:
        yield config.mediator(storage)
    finally:
        await storage.close()


def body(**event: typing.Any) -> bytes:
    return json.dumps(event).encode()


async def run_started(mediator: SagaMediator, accepted: typing.Any) -> None:
    for saga in accepted.started:
        await mediator.resume(saga.saga_id)


# -- declaring triggers --------------------------------------------------------------------------


def test_triggers_are_found_on_the_saga_and_its_subclasses() -> None:
    (binding,) = triggers_of(WebhookOrderSaga)
    assert (binding.method_name, binding.spec.source, binding.spec.idempotency_key) == (
        "from_order_created",
        "order_created",
        "order_id",
    )
    assert not binding.spec.retry_failed

    class Renamed(WebhookOrderSaga):
        name = "renamed"

    class Silenced(WebhookOrderSaga):
        name = "silenced"

        def from_order_created(self, event: dict[str, typing.Any]) -> None:
            return None

    assert [b.saga_type for b in triggers_of(Renamed)] == [Renamed]
    assert triggers_of(Silenced) == []
    dispatcher = TriggerDispatcher(SAGAS, **UNSIGNED)
    assert dispatcher.sources == ["order_created", "payment_due"]
    assert [b.saga_type for b in dispatcher.router.bindings("order_created")] == [WebhookOrderSaga, WebhookAuditSaga]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(("",), {}), (("a/b",), {}), (("ok", ""), {}), (("ok", "id"), {"max_attempts": 0})],
)
def test_bad_trigger_declarations_are_refused(args: tuple[typing.Any, ...], kwargs: dict[str, typing.Any]) -> None:
    with pytest.raises(ValueError):
        trigger(*args, **kwargs)


def test_derived_ids_are_stable_and_distinct_per_saga_key_and_attempt() -> None:
    first = derive_saga_id("webhook_order", "O-1")
    assert first == derive_saga_id("webhook_order", "O-1", 0) == uuid.uuid5(
        uuid.UUID("5b0d6a53-3c39-4d7e-9a61-0f1f3f3b6c2e"), '["webhook_order", "O-1", 0]'
    )
    ids = {
        first,
        derive_saga_id("webhook_audit", "O-1"),
        derive_saga_id("webhook_order", "O-1", 1),
        derive_saga_id("webhook_order", "O-2"),
        # no ambiguity between a key that looks like an attempt suffix and a real attempt
        derive_saga_id("webhook_order", "O-1#1"),
        derive_saga_id("a", "b\x00c"),
        derive_saga_id("a\x00b", "c"),
    }
    assert len(ids) == 7


# -- signatures ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_signed_body_verifies_in_both_header_forms() -> None:
    clock = Clock()
    verifier = SignatureVerifier(webhook_sagas.SECRET, clock=clock)
    payload = body(order_id="O-1")
    headers = verifier.headers(payload)
    assert headers["X-Signature-Timestamp"] == "1700000000"
    assert headers["X-Signature"].startswith("sha256=")
    verifier.verify(payload, headers)
    verifier.verify(payload, {k.lower(): v for k, v in headers.items()})  # header names are case-insensitive
    bare = {**headers, "X-Signature": headers["X-Signature"].removeprefix("sha256=")}
    verifier.verify(payload, bare)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, b: ({k: v for k, v in h.items() if k != "X-Signature"}, b), "Missing signature header"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "X-Signature-Timestamp"}, b), "timestamp header"),
        (lambda h, b: ({**h, "X-Signature": "sha256=" + "0" * 64}, b), "does not match"),
        (lambda h, b: ({**h, "X-Signature": "sha1=abc"}, b), "does not match"),
        (lambda h, b: (h, b + b" "), "does not match"),
        (lambda h, b: ({**h, "X-Signature-Timestamp": "1700000001"}, b), "does not match"),
        (lambda h, b: ({**h, "X-Signature-Timestamp": "nan"}, b), "outside the allowed window"),
        (lambda h, b: ({**h, "X-Signature-Timestamp": "soon"}, b), "not a number"),
    ],
    ids=["no-signature", "no-timestamp", "wrong", "other-algorithm", "other-body", "other-time", "nan", "text"],
)
def test_bad_signatures_are_401(
    change: typing.Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]], message: str
) -> None:
    verifier = SignatureVerifier(webhook_sagas.SECRET, clock=Clock())
    payload = body(order_id="O-1")
    headers, sent = change(verifier.headers(payload), payload)
    with pytest.raises(Problem, match=message) as caught:
        verifier.verify(sent, headers)
    assert caught.value.status == 401


def test_stale_and_future_timestamps_are_replays() -> None:
    clock = Clock()
    verifier = SignatureVerifier(webhook_sagas.SECRET, clock=clock, tolerance=60)
    payload = body(order_id="O-1")
    headers = verifier.headers(payload)
    clock.now += 60
    verifier.verify(payload, headers)  # at the edge of the window
    clock.now += 1
    with pytest.raises(Problem, match="outside the allowed window"):
        verifier.verify(payload, headers)
    clock.now -= 122
    with pytest.raises(Problem, match="outside the allowed window"):
        verifier.verify(payload, headers)


def test_the_default_verifier_is_sha256_on_x_signature_with_a_300_second_window() -> None:
    clock = Clock()
    verifier = SignatureVerifier(webhook_sagas.SECRET, clock=clock)
    payload = body(order_id="O-1")
    headers = verifier.headers(payload)
    assert set(headers) == {"X-Signature", "X-Signature-Timestamp"}
    assert headers["X-Signature"].startswith("sha256=")
    clock.now += 300
    verifier.verify(payload, headers)
    clock.now += 1
    with pytest.raises(Problem, match="outside the allowed window"):
        verifier.verify(payload, headers)


def test_a_retried_trigger_allows_ten_attempts_by_default() -> None:
    class Retried(WebhookOrderSaga):
        name = "retried"

        @trigger("order_created", "order_id", retry_failed=True)
        def from_order_created(self, event: dict[str, typing.Any]) -> typing.Any:
            return super().from_order_created(event)

    (binding,) = triggers_of(Retried)
    assert binding.spec.retry_failed and binding.spec.max_attempts == 10


def test_other_header_algorithm_and_body_only_signatures() -> None:
    verifier = SignatureVerifier(b"k", header="X-Hub-Signature-512", algorithm="sha512", timestamp_header=None)
    payload = b'{"a": 1}'
    headers = verifier.headers(payload)
    assert list(headers) == ["X-Hub-Signature-512"] and headers["X-Hub-Signature-512"].startswith("sha512=")
    verifier.verify(payload, headers)
    with pytest.raises(Problem):
        verifier.verify(payload, {"X-Hub-Signature-512": SignatureVerifier(b"other", timestamp_header=None,
                                                                           algorithm="sha512").sign(payload)})
    with pytest.raises(ValueError, match="not an HMAC algorithm"):
        SignatureVerifier("k", algorithm="rot13")
    with pytest.raises(ValueError, match="non-empty secret"):
        SignatureVerifier("")


# -- the dispatcher ------------------------------------------------------------------------------------


async def test_one_event_starts_each_of_its_sagas_once(mediator: SagaMediator) -> None:
    dispatcher = TriggerDispatcher(SAGAS, **UNSIGNED)
    payload = body(order_id="O-1", amount=12.5)

    first = await dispatcher.accept(mediator, "order_created", payload, {}, correlation_id="delivery-1")
    again = await dispatcher.accept(mediator, "order_created", payload, {}, correlation_id="delivery-2")

    assert first.status == "accepted" and first.correlation_id == "delivery-1"
    assert [(s.saga, s.duplicate) for s in first.sagas] == [("webhook_order", False), ("webhook_audit", False)]
    assert [s.saga_id for s in first.sagas] == [
        derive_saga_id("webhook_order", "O-1"),
        derive_saga_id("webhook_audit", "O-1"),  # same key, another saga type: no collision
    ]
    assert again.status == "duplicate" and again.started == []
    assert again.correlation_id == "delivery-1"  # the delivery that started them
    assert [s.saga_id for s in again.sagas] == [s.saga_id for s in first.sagas]
    stored = await mediator.storage.list_sagas()
    assert sorted((r.name, r.status, r.correlation_id) for r in stored) == [
        ("webhook_audit", SagaStatus.PENDING, "delivery-1"),
        ("webhook_order", SagaStatus.PENDING, "delivery-1"),
    ]
    await run_started(mediator, first)
    status = await dispatcher.status(mediator.storage, "order_created", "delivery-1")
    assert status["status"] == "completed"
    assert {s["saga"]: [c["step"] for c in s["completed_steps"]] for s in status["sagas"]} == {
        "webhook_order": ["reserve", "charge"],
        "webhook_audit": ["note"],
    }


async def test_fifty_concurrent_copies_start_one_saga(mediator: SagaMediator) -> None:
    dispatcher = TriggerDispatcher(SAGAS, **UNSIGNED)
    payload = body(order_id="O-7", amount=7)

    answers = await asyncio.gather(
        *(dispatcher.accept(mediator, "order_created", payload, {}, correlation_id=f"d-{n}") for n in range(50))
    )

    # Each saga was started by exactly one delivery (one may start both, or two one each) ...
    started = sorted(s.saga for a in answers for s in a.started)
    assert started == ["webhook_audit", "webhook_order"]
    # ... and all of them answer with the correlation id the sagas are stored under.
    stored = await mediator.storage.list_sagas(limit=1000)
    assert len(stored) == 2 and len({r.correlation_id for r in stored}) == 1
    assert {a.correlation_id for a in answers} == {stored[0].correlation_id}


async def test_a_delivery_that_finds_some_sagas_started_joins_their_correlation_id(mediator: SagaMediator) -> None:
    payload = body(order_id="O-9", amount=9)
    # An earlier delivery got as far as the first saga (or the second trigger is new since).
    early = await TriggerDispatcher([WebhookOrderSaga], **UNSIGNED).accept(
        mediator, "order_created", payload, {}, correlation_id="early"
    )
    assert [s.saga for s in early.started] == ["webhook_order"]

    late = await TriggerDispatcher(SAGAS, **UNSIGNED).accept(
        mediator, "order_created", payload, {}, correlation_id="late"
    )

    assert late.status == "accepted" and late.correlation_id == "early"
    assert [(s.saga, s.duplicate) for s in late.sagas] == [("webhook_order", True), ("webhook_audit", False)]
    stored = await mediator.storage.list_sagas()
    assert sorted((r.name, r.correlation_id) for r in stored) == [
        ("webhook_audit", "early"),
        ("webhook_order", "early"),
    ]


async def test_ignored_and_refused_events_store_nothing(mediator: SagaMediator) -> None:
    dispatcher = TriggerDispatcher(SAGAS, max_body_bytes=200, **UNSIGNED)
    ignored = await dispatcher.accept(mediator, "order_created", body(order_id="O-1", test_event=True), {})
    assert ignored.status == "ignored" and ignored.sagas == []

    refusals = [
        ("nope", body(order_id="O-1", amount=1), 404, "Unknown event source"),
        ("order_created", b"{not json", 400, "not valid JSON"),
        ("order_created", b"[1, 2]", 400, "must be a JSON object"),
        ("order_created", b"x" * 201, 413, "limit of 200"),
        ("order_created", body(amount=1), 422, "no idempotency field 'order_id'"),
        ("order_created", body(order_id="", amount=1), 422, "no idempotency field"),
        ("order_created", body(order_id=["O"], amount=1), 422, "is a list"),
        ("order_created", body(order_id="O-1"), 422, "could not read the event: KeyError"),
        ("order_created", body(order_id="O-1", amount="lots"), 422, "amount"),
        ("payment_due", body(invoice={"amount": 3}), 422, "no idempotency field 'invoice.id'"),
    ]
    for source, payload, status, message in refusals:
        with pytest.raises(Problem, match=message) as caught:
            await dispatcher.accept(mediator, source, payload, {})
        assert caught.value.status == status, (source, payload)
    assert await mediator.storage.list_sagas() == []


async def test_the_signature_is_checked_before_anything_else(mediator: SagaMediator) -> None:
    verifier = SignatureVerifier(webhook_sagas.SECRET)
    dispatcher = TriggerDispatcher(SAGAS, verifier=verifier)
    payload = body(order_id="O-1", amount=1)
    for source in ("order_created", "unknown"):
        with pytest.raises(Problem) as caught:
            await dispatcher.accept(mediator, source, payload, {"X-Signature": "sha256=00"})
        assert caught.value.status == 401
    with pytest.raises(Problem) as caught:
        await dispatcher.accept(mediator, "unknown", payload, verifier.headers(payload))
    assert caught.value.status == 404
    assert await mediator.storage.list_sagas() == []
    accepted = await dispatcher.accept(mediator, "order_created", payload, verifier.headers(payload))
    assert accepted.status == "accepted"


async def test_a_failed_key_is_retried_once_per_failure_when_allowed(mediator: SagaMediator) -> None:
    dispatcher = TriggerDispatcher(SAGAS, **UNSIGNED)
    payload = body(invoice={"id": 42, "amount": 9.5})
    webhook_sagas.FLAKY["42"] = 1

    first = await dispatcher.accept(mediator, "payment_due", payload, {}, correlation_id="try-1")
    await run_started(mediator, first)
    failed = await dispatcher.status(mediator.storage, "payment_due", "try-1")
    assert failed["status"] == "failed" and "bank unavailable for 42" in failed["sagas"][0]["error"]

    # 20 concurrent redeliveries of the failed key: one new attempt
    answers = await asyncio.gather(
        *(dispatcher.accept(mediator, "payment_due", payload, {}, correlation_id=f"retry-{n}") for n in range(20))
    )
    (second,) = [a for a in answers if a.started]
    assert second.sagas[0].attempt == 1 and second.sagas[0].saga_id == derive_saga_id("webhook_payment", "42", 1)
    assert {a.correlation_id for a in answers} == {second.correlation_id}
    await run_started(mediator, second)
    done = await dispatcher.status(mediator.storage, "payment_due", second.correlation_id)
    assert done["status"] == "completed"

    # completed: never again
    third = await dispatcher.accept(mediator, "payment_due", payload, {})
    assert third.status == "duplicate" and third.sagas[0].attempt == 1
    assert third.sagas[0].status == SagaStatus.COMPLETED
    records = await mediator.storage.list_sagas(name="webhook_payment")
    assert sorted((r.status, r.correlation_id) for r in records) == [
        (SagaStatus.COMPLETED, second.correlation_id),
        (SagaStatus.FAILED, "try-1"),
    ]


async def test_retries_stop_at_max_attempts_and_other_sagas_never_retry(mediator: SagaMediator) -> None:
    dispatcher = TriggerDispatcher(SAGAS, **UNSIGNED)
    payload = body(invoice={"id": "I-9", "amount": 1})
    webhook_sagas.FLAKY["I-9"] = 10
    for attempt in range(3):
        accepted = await dispatcher.accept(mediator, "payment_due", payload, {})
        assert accepted.sagas[0].attempt == attempt
        await run_started(mediator, accepted)
    with pytest.raises(Problem, match="failed 3 times") as caught:
        await dispatcher.accept(mediator, "payment_due", payload, {})
    assert caught.value.status == 409

    order = body(order_id="O-5", amount=1, fail=True)
    first = await dispatcher.accept(mediator, "order_created", order, {})
    await run_started(mediator, first)
    again = await dispatcher.accept(mediator, "order_created", order, {})
    assert again.status == "duplicate"
    assert [s.status for s in again.sagas] == [SagaStatus.FAILED, SagaStatus.COMPLETED]


async def test_status_shows_failure_with_error_and_compensations(mediator: SagaMediator) -> None:
    dispatcher = TriggerDispatcher(SAGAS, **UNSIGNED)
    accepted = await dispatcher.accept(
        mediator, "order_created", body(order_id="O-3", amount=3, fail=True), {}, correlation_id="bad-order"
    )
    running = await dispatcher.status(mediator.storage, "order_created", "bad-order")
    assert running["status"] == "processing"
    assert {s["status"] for s in running["sagas"]} == {"pending"}
    await run_started(mediator, accepted)

    status = await dispatcher.status(mediator.storage, "order_created", "bad-order")
    assert status["status"] == "failed"
    order = next(s for s in status["sagas"] if s["saga"] == "webhook_order")
    assert order["status"] == "failed"
    assert "card refused for O-3" in order["error"]
    assert order["failed_step"] == "charge"
    assert order["compensated_steps"] == ["reserve"]
    assert order["completed_steps"][0]["response"] == {"reservation_id": "res-O-3"}
    with pytest.raises(Problem) as caught:
        await dispatcher.status(mediator.storage, "order_created", "no-such-event")
    assert caught.value.status == 404
    with pytest.raises(Problem) as caught:
        await dispatcher.status(mediator.storage, "payment_due", "bad-order")  # not that source's sagas
    assert caught.value.status == 404


async def test_sagas_with_triggers_must_be_registered(mediator: SagaMediator) -> None:
    class Unregistered(WebhookPaymentSaga):
        name = "unregistered"

    dispatcher = TriggerDispatcher([Unregistered], insecure_unsigned_sources=["payment_due"])
    with pytest.raises(RuntimeError, match="not among the app's sagas"):
        await dispatcher.accept(mediator, "payment_due", body(invoice={"id": 1, "amount": 1}), {})


async def test_a_trigger_returning_the_wrong_type_is_a_programming_error(mediator: SagaMediator) -> None:
    class Wrong(WebhookPaymentSaga):
        name = "wrong"

        @trigger(source="wrong")
        def start(self, event: dict[str, typing.Any]) -> typing.Any:
            return 42

    with pytest.raises(TypeError, match="returned a int"):
        await TriggerDispatcher([Wrong], insecure_unsigned_sources=["wrong"]).accept(mediator, "wrong", b"{}", {})
