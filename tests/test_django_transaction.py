"""atomic_saga_start: the saga row commits or rolls back with the Django transaction around it.

On SQLite and PostgreSQL: a rollback leaves no trace; a commit hands the saga
to the in-process runner, which completes it; a web process SIGKILLed right
after the commit, before the hand-off, leaves a pending saga that
``manage.py saga_worker`` (a real subprocess, stopped with SIGTERM) completes.
"""

from __future__ import annotations

import datetime
import json
import logging
import signal
import subprocess
import sys
import typing
import uuid

import pytest

from cqrs.saga.storage.enums import SagaStatus
from django_project.testing import (
    EXAMPLE,
    TESTS,
    Database,
    _django_configured,  # noqa: F401
    _saga_db,  # noqa: F401
    count_rows,
    history,
    record,
    stop,
    wait_for,
)

ORDER = {
    "order_id": "ORD-001",
    "user_id": "USER-123",
    "items": [{"sku": "ITEM-1", "quantity": 2}],
    "amount": 99.99,
}
ORDER_STEPS = ["reserve_inventory", "charge_payment", "ship_order"]


def order_context(order_id: str = "ORD-001", amount: float = 99.99) -> typing.Any:
    from orders.sagas import OrderContext, OrderItem

    return OrderContext(
        order_id=order_id, user_id="USER-123", items=[OrderItem("ITEM-1", 2)], amount=amount
    )


def create_order(order_id: str, saga_id: uuid.UUID) -> None:
    from orders.models import Order

    Order.objects.create(order_id=order_id, user_id="USER-123", items=[], amount="99.99", saga_id=saga_id)


def completed_steps(saga_id: uuid.UUID | str) -> list[str]:
    return [entry.step_name for entry in history(saga_id) if entry.action == "act" and entry.status == "completed"]


def test_rollback_leaves_no_trace(saga_db: Database) -> None:
    from django.db import transaction
    from orders.models import Order
    from orders.sagas import OrderSaga

    from cqrs.integrations.django import atomic_saga_start, wait_for_sagas

    with pytest.raises(RuntimeError, match="payment provider said no"), transaction.atomic():
        saga_id = uuid.uuid4()
        create_order("ORD-RB", saga_id)
        assert atomic_saga_start(OrderSaga, order_context("ORD-RB"), saga_id=saga_id) == saga_id
        assert count_rows("saga_executions") == 1  # written, in this transaction
        raise RuntimeError("payment provider said no")

    assert count_rows("saga_executions") == 0
    assert count_rows("saga_log") == 0
    assert not Order.objects.exists()
    assert wait_for_sagas(timeout=5)  # nothing was handed to the runner
    assert record(saga_id) is None


def test_commit_starts_the_saga_and_it_completes(saga_db: Database) -> None:
    from django.db import transaction
    from orders.models import Order
    from orders.sagas import OrderSaga

    from cqrs.integrations.django import atomic_saga_start, wait_for_sagas

    with transaction.atomic():
        saga_id = uuid.uuid4()
        create_order("ORD-OK", saga_id)
        atomic_saga_start(
            OrderSaga, context=order_context("ORD-OK"), using="default", saga_id=saga_id, correlation_id="trace-ok"
        )
        # Other connections (the saga storage's) do not see it before the commit.
        assert record(saga_id) is None

    assert wait_for_sagas(timeout=30)
    stored = record(saga_id)
    assert stored.status == SagaStatus.COMPLETED
    assert stored.correlation_id == "trace-ok"
    assert stored.owner is None  # released at the end
    assert stored.context["tracking_number"] == "trk-ORD-OK"
    assert completed_steps(saga_id) == ORDER_STEPS
    assert Order.objects.get(order_id="ORD-OK").saga_id == saga_id


def test_the_row_is_pending_unowned_and_already_expired(saga_db: Database, settings: typing.Any) -> None:
    """With RUN_ON_COMMIT off, the committed row is exactly what a worker claims."""
    from django.core.management import call_command
    from django.db import transaction
    from orders.sagas import OrderSaga

    from cqrs.correlation import reset_correlation_id, set_correlation_id
    from cqrs.integrations.django import atomic_saga_start, wait_for_sagas
    from cqrs.saga._serialization import dump_context

    settings.CQRS_SAGA = {**settings.CQRS_SAGA, "RUN_ON_COMMIT": False}
    context = order_context("ORD-ROW")
    token = set_correlation_id("from-the-request")
    try:
        with transaction.atomic():
            saga_id = atomic_saga_start(context)  # the saga bound to the context's type
    finally:
        reset_correlation_id(token)
    assert wait_for_sagas(timeout=5)

    stored = record(saga_id)
    assert stored.name == OrderSaga.name
    assert stored.definition_version == OrderSaga.version
    assert stored.status == SagaStatus.PENDING
    assert stored.owner is None
    assert stored.lease_epoch == 0
    assert stored.recovery_attempts == 0
    assert stored.version == 1
    assert stored.error is None
    assert stored.correlation_id == "from-the-request"
    assert stored.context == dump_context(context)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert stored.lease_expires_at <= now + datetime.timedelta(seconds=1)
    assert abs((stored.created_at - now).total_seconds()) < 60
    assert history(saga_id) == []

    call_command("saga_worker", "--once")
    assert record(saga_id).status == SagaStatus.COMPLETED
    assert completed_steps(saga_id) == ORDER_STEPS


def test_outside_atomic_the_row_commits_and_runs_at_once(saga_db: Database) -> None:
    from cqrs.integrations.django import atomic_saga_start, wait_for_sagas

    saga_id = atomic_saga_start(order_context("ORD-AUTO"))
    assert wait_for_sagas(timeout=30)
    assert record(saga_id).status == SagaStatus.COMPLETED


def test_a_failing_saga_started_atomically_is_compensated(saga_db: Database) -> None:
    from django.db import transaction

    from cqrs.integrations.django import atomic_saga_start, wait_for_sagas

    with transaction.atomic():
        saga_id = atomic_saga_start(order_context("ORD-BIG", amount=50_000.0))
    assert wait_for_sagas(timeout=30)
    stored = record(saga_id)
    assert stored.status == SagaStatus.FAILED
    assert "PaymentDeclined" in stored.error
    assert [e.step_name for e in history(saga_id) if e.action == "compensate"] == ["reserve_inventory"]


def test_commit_then_killed_web_process_is_finished_by_saga_worker(saga_db: Database) -> None:
    from orders.models import Order

    # The web process: commits the order and its saga, then is SIGKILLed before the saga runs.
    killed = subprocess.run(
        [sys.executable, str(TESTS / "django_project" / "kill_after_commit.py"), json.dumps(ORDER)],
        cwd=EXAMPLE, env=saga_db.env(), capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert "still alive" not in killed.stdout
    marker, saga_id = killed.stdout.split()
    assert marker == "COMMITTED"

    # Committed (the order and its saga), and nobody ran it.
    assert Order.objects.get(order_id="ORD-001").saga_id == uuid.UUID(saga_id)
    stored = record(saga_id)
    assert stored.status == SagaStatus.PENDING
    assert stored.owner is None
    assert stored.correlation_id == "killed-123"
    assert history(saga_id) == []

    # The worker, as deployed: a long-running `manage.py saga_worker`, stopped with SIGTERM.
    worker = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "manage.py"), "saga_worker", "--poll-interval", "0.2"],
        cwd=EXAMPLE, env=saga_db.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: record(saga_id).status == SagaStatus.COMPLETED, timeout=60, what="saga_worker")
        assert stop(worker, signal.SIGTERM) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    out, err = worker.communicate()
    assert "saga_worker: SIGTERM: no more claims" in out, out + err
    assert out.rstrip().endswith("saga_worker: stopped: completed=1"), out + err
    # The steps' log records carry the request's correlation id (the example logs it to stderr).
    assert "[killed-123] orders: order ORD-001: shipped as trk-ORD-001" in err, err

    stored = record(saga_id)
    assert stored.status == SagaStatus.COMPLETED
    assert stored.owner is None
    assert stored.recovery_attempts == 1
    assert completed_steps(saga_id) == ORDER_STEPS


def test_atomic_start_refuses_what_it_cannot_make_atomic(saga_db: Database, settings: typing.Any) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from orders.sagas import OrderSaga

    from cqrs.integrations.django import atomic_saga_start
    from django_project.sagas import EchoContext, EchoSaga

    with pytest.raises(TypeError, match="does not run on EchoContext"):
        atomic_saga_start(OrderSaga, EchoContext(text="x"))
    with pytest.raises(TypeError, match="Pass the context"):
        atomic_saga_start(OrderSaga)
    with pytest.raises(ImproperlyConfigured, match=r"sagas live in DATABASES\['default'\]"):
        atomic_saga_start(EchoSaga, EchoContext(text="x"), using="other")

    settings.CQRS_SAGA = {**settings.CQRS_SAGA, "SAGAS": ["django_project.sagas.EchoSaga"]}
    with pytest.raises(ImproperlyConfigured, match=r"OrderSaga is not among the app's sagas.*CQRS_SAGA\['SAGAS'\]"):
        atomic_saga_start(OrderSaga, order_context())

    settings.CQRS_SAGA = {**settings.CQRS_SAGA, "STORAGE_URL": "memory://"}
    with pytest.raises(ImproperlyConfigured, match="STORAGE_URL'] points elsewhere"):
        atomic_saga_start(EchoSaga, EchoContext(text="x"))
    assert count_rows("saga_executions") == 0


# -- SQLite: Django's connection and the storage's share one file ------------------------------------


@pytest.mark.parametrize("saga_db", ["sqlite"], indirect=True)
def test_a_sqlite_saga_database_is_in_wal_mode(saga_db: Database) -> None:
    """Set when Django connects: the storage cannot switch while a Django transaction holds the lock."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"


@pytest.mark.parametrize("saga_db", ["sqlite"], indirect=True)
def test_sqlite_web_writes_and_background_saga_writes_interleave(
    saga_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Orders committed through Django while earlier orders' sagas write through aiosqlite.

    The storage's first connection opens inside a Django write transaction
    (it could not switch the file to WAL then); no write may fail with
    "database is locked" and nothing is logged as a failed background run.
    """
    from django.db import transaction
    from orders.sagas import OrderSaga

    from cqrs.integrations.django import atomic_saga_start, wait_for_sagas

    ids = []
    for number in range(30):
        with transaction.atomic():
            saga_id = uuid.uuid4()
            create_order(f"ORD-{number}", saga_id)
            ids.append(atomic_saga_start(OrderSaga, order_context(f"ORD-{number}"), saga_id=saga_id))
            if number == 0:
                assert record(saga_id) is None  # the storage's first connection opens inside the transaction
    assert wait_for_sagas(timeout=60)
    assert [record(saga_id).status for saga_id in ids] == [SagaStatus.COMPLETED] * len(ids)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
