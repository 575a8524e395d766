"""The outbox in a Django project: a start's events commit or roll back with the caller's transaction, and
``manage.py saga_relay`` publishes them (on SQLite and PostgreSQL).

``atomic_saga_start(..., events=[...])`` writes the saga's row and its outbox rows through Django's own
connection: a rollback leaves neither, a commit leaves both. ``start_saga_on_commit(..., events=[...])``
writes them together in the storage's commit after the caller's. ``saga_relay --once`` then publishes them
through ``CQRS_SAGA["MESSAGE_BROKER"]``, in order.
"""

from __future__ import annotations

import typing
import uuid

import pytest

from django_project.testing import (
    Database,
    _django_configured,  # noqa: F401
    _saga_db,  # noqa: F401
    count_rows,
    on_saga_loop,
)


def order_context(order_id: str) -> typing.Any:
    from orders.sagas import OrderContext, OrderItem

    return OrderContext(order_id=order_id, user_id="USER-1", items=[OrderItem("ITEM-1", 1)], amount=10.0)


def announced(name: str) -> typing.Any:
    from cqrs.events.event import NotificationEvent

    return NotificationEvent[dict[str, str]](event_name=name, topic="orders", payload={"order": name})


@pytest.fixture
def outbox_on(settings: typing.Any) -> typing.Any:
    from django_project.brokers import broker

    broker.sent.clear()
    settings.CQRS_SAGA = {
        **settings.CQRS_SAGA, "OUTBOX": True, "RUN_ON_COMMIT": False,
        "MESSAGE_BROKER": "django_project.brokers.broker",
    }
    return broker


def test_atomic_start_writes_its_events_in_the_callers_transaction(saga_db: Database, outbox_on: typing.Any) -> None:
    from django.core.management import call_command
    from django.db import transaction
    from orders.sagas import OrderSaga

    from cqrs.integrations.django import atomic_saga_start

    with pytest.raises(RuntimeError, match="changed our mind"), transaction.atomic():
        atomic_saga_start(OrderSaga, order_context("ORD-RB"), events=[announced("order.placed")])
        assert count_rows("saga_outbox") == 1  # written, in this transaction
        raise RuntimeError("changed our mind")
    assert count_rows("saga_outbox") == 0 and count_rows("saga_executions") == 0

    with transaction.atomic():
        saga_id = atomic_saga_start(
            OrderSaga, order_context("ORD-OK"), events=[announced("order.placed"), announced("order.noted")]
        )
    rows = on_saga_loop(lambda storage: storage.list_outbox(saga_id=saga_id))
    assert [row.headers["event-name"] for row in rows] == ["order.placed", "order.noted"]

    call_command("saga_relay", "--once")
    assert outbox_on.event_names() == ["order.placed", "order.noted"]
    assert {m.headers["saga-id"] for m in outbox_on.sent} == {str(saga_id)}


def test_deferred_start_carries_its_events(saga_db: Database, outbox_on: typing.Any) -> None:
    from django.db import transaction
    from orders.sagas import OrderSaga

    from cqrs.integrations.django import start_saga_on_commit, wait_for_sagas

    with transaction.atomic():
        saga_id = start_saga_on_commit(OrderSaga, order_context("ORD-D"), events=[announced("order.deferred")])
    assert wait_for_sagas(timeout=30)
    rows = on_saga_loop(lambda storage: storage.list_outbox(saga_id=saga_id))
    assert [row.headers["event-name"] for row in rows][:1] == ["order.deferred"]


def test_events_without_the_outbox_are_refused(saga_db: Database) -> None:
    from orders.sagas import OrderSaga

    from cqrs.integrations.django import atomic_saga_start, start_saga_on_commit

    with pytest.raises(ValueError, match="outbox"):
        start_saga_on_commit(OrderSaga, order_context("ORD-X"), events=[announced("x")])
    with pytest.raises(ValueError, match="outbox"):
        atomic_saga_start(OrderSaga, order_context("ORD-Y"), saga_id=uuid.uuid4(), events=[announced("y")])
    assert count_rows("saga_outbox") == 0


def test_saga_relay_needs_a_broker(saga_db: Database, settings: typing.Any) -> None:
    from django.core.management import CommandError, call_command

    settings.CQRS_SAGA = {**settings.CQRS_SAGA, "OUTBOX": True}
    with pytest.raises(CommandError, match="MESSAGE_BROKER"):
        call_command("saga_relay", "--once")
    with pytest.raises(CommandError, match="--batch-size"):
        call_command("saga_relay", "--once", "--batch-size", "0")
