"""Webhooks on Django: ``include("cqrs.integrations.django.webhooks")`` over memory, SQLite and PostgreSQL.

The test project's settings are reused; each test points ``DATABASES`` at a
fresh database (sagas live there, or in memory with ``STORAGE_URL``), lists the
webhook sagas in ``CQRS_SAGA`` and routes with `django_project.webhook_urls`.
The 50 concurrent deliveries are 50 threads, each with its own test client,
released at once by a barrier: each request runs its view on its own thread
and blocks on the saga loop, as under a threaded WSGI server. Background runs
are awaited with ``wait_for_sagas``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import pathlib
import threading
import typing

import pytest

from cqrs.saga.storage.enums import SagaStatus
from cqrs.triggers import derive_saga_id
from django_project import webhook_sagas
from django_project.testing import _django_configured, on_saga_loop, point_django_at  # noqa: F401

VERIFIER = webhook_sagas.VERIFIER
STORAGES = ["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(autouse=True)
def _reset() -> None:
    webhook_sagas.reset()


@pytest.fixture(params=STORAGES)
def hooks(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, django_configured: None
) -> typing.Iterator[str]:
    """Django on a fresh database, the webhook sagas configured and routed; yields the storage kind."""
    from config.settings import database_from_url
    from django.core.management import call_command
    from django.db import connections
    from django.test import override_settings

    from cqrs.integrations import django as saga_django

    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    cqrs_saga: dict[str, typing.Any] = {
        "SAGAS": webhook_sagas.SAGA_PATHS,
        "COMPENSATION_RETRY_DELAY": 0.0,
        "LEASE_SECONDS": 5,
    }
    if request.param == "memory":
        cqrs_saga["STORAGE_URL"] = "memory://"
    blocker = request.getfixturevalue("django_db_blocker")
    with contextlib.ExitStack() as stack:
        if blocker is not None:
            stack.enter_context(blocker.unblock())
        point_django_at(database_from_url(url))
        call_command("migrate", verbosity=0, interactive=False)
        stack.enter_context(
            override_settings(
                CQRS_SAGA=cqrs_saga,  # re-read at once (the app's setting_changed hook)
                CQRS_SAGA_WEBHOOKS={"SECRET": webhook_sagas.SECRET, "MAX_BODY_BYTES": 4096},
                ROOT_URLCONF="django_project.webhook_urls",
            )
        )
        try:
            yield request.param
        finally:
            saga_django.shutdown(timeout=10)
            connections.close_all()


def deliver(
    source: str, event: typing.Any, *, sign: bool = True, client: typing.Any = None, prefix: str = "webhooks",
    **headers: str,
) -> typing.Any:
    from django.test import Client

    raw = event if isinstance(event, bytes) else json.dumps(event).encode()
    signed = VERIFIER.headers(raw) if sign else {}
    return (client or Client()).post(
        f"/{prefix}/{source}", raw, content_type="application/json", headers={**signed, **headers}
    )


def get(path: str) -> typing.Any:
    from django.test import Client

    return Client().get(path)


def stored(**filters: typing.Any) -> list[typing.Any]:
    return typing.cast(list[typing.Any], on_saga_loop(lambda storage: storage.list_sagas(limit=1000, **filters)))


def settle() -> None:
    from cqrs.integrations.django import wait_for_sagas

    assert wait_for_sagas(timeout=30)


def test_fifty_concurrent_identical_deliveries_start_one_saga(hooks: str) -> None:
    from django.test import Client

    event = {"order_id": "O-50", "amount": 50.0}
    barrier = threading.Barrier(50)
    threads: set[int] = set()

    def one(_: int) -> typing.Any:
        client = Client()
        barrier.wait(timeout=30)
        threads.add(threading.get_ident())
        return deliver("order_created", event, client=client)

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, range(50)))

    assert len(threads) == 50
    assert {r.status_code for r in answers} == {202}, [r.content for r in answers if r.status_code != 202]
    bodies = [r.json() for r in answers]
    # Each saga was started by exactly one delivery (one delivery may start both, or two one each).
    started = [s["saga"] for b in bodies for s in b["sagas"] if not s["duplicate"]]
    assert sorted(started) == ["webhook_audit", "webhook_order"]
    assert {b["status"] for b in bodies} == {"accepted", "duplicate"}
    assert len({b["correlation_id"] for b in bodies}) == 1
    assert {tuple(s["saga_id"] for s in b["sagas"]) for b in bodies} == {
        (str(derive_saga_id("webhook_order", "O-50")), str(derive_saga_id("webhook_audit", "O-50")))
    }
    settle()
    assert sorted((r.name, r.status) for r in stored()) == [
        ("webhook_audit", SagaStatus.COMPLETED),
        ("webhook_order", SagaStatus.COMPLETED),
    ]
    assert webhook_sagas.RUNS == {("reserve", "O-50"): 1, ("charge", "O-50"): 1, ("note", "O-50"): 1}


def test_a_bad_signature_is_401_and_stores_nothing(hooks: str) -> None:
    raw = json.dumps({"order_id": "O-1", "amount": 1}).encode()
    for headers in webhook_sagas.forged_signatures(raw):
        response = deliver("order_created", raw, sign=False, **headers)
        assert response.status_code == 401, headers
        assert "signature" in response.json()["error"].lower()
    assert stored() == []
    if hooks != "memory":
        from django_project.testing import count_rows

        assert count_rows("saga_executions") == 0


def test_status_reflects_completion_and_failure(hooks: str) -> None:
    ok = deliver("order_created", {"order_id": "O-1", "amount": 10}, **{"X-Correlation-ID": "ev-ok"})
    bad = deliver("order_created", {"order_id": "O-2", "amount": 20, "fail": True})
    assert ok.status_code == bad.status_code == 202
    assert ok.json()["correlation_id"] == "ev-ok" and ok["X-Correlation-ID"] == "ev-ok"
    settle()

    done = get("/webhooks/order_created/status/ev-ok")
    assert done.status_code == 200
    body = done.json()
    assert body["status"] == "completed"
    sagas = {s["saga"]: s for s in body["sagas"]}
    assert [(c["step"], c["response"]) for c in sagas["webhook_order"]["completed_steps"]] == [
        ("reserve", {"reservation_id": "res-O-1"}),
        ("charge", {"charged": 10.0}),
    ]
    assert sagas["webhook_audit"]["status"] == "completed"

    failed = get(f"/webhooks/order_created/status/{bad.json()['correlation_id']}/").json()
    assert failed["status"] == "failed"
    order = next(s for s in failed["sagas"] if s["saga"] == "webhook_order")
    assert order["status"] == "failed"
    assert "card refused for O-2" in order["error"]
    assert order["failed_step"] == "charge"
    assert order["compensated_steps"] == ["reserve"]

    missing = get("/webhooks/order_created/status/unknown-id")
    assert missing.status_code == 404 and "No saga" in missing.json()["error"]
    assert get("/webhooks/nope/status/ev-ok").status_code == 404


@pytest.mark.parametrize("hooks", ["memory", "sqlite"], indirect=True)
def test_bad_deliveries_are_refused_and_store_nothing(hooks: str) -> None:
    for source, event, status, message in webhook_sagas.BAD_DELIVERIES:
        response = deliver(source, event)
        assert response.status_code == status, (source, event, response.content)
        assert message in response.json()["error"]
    wrong_method = get("/webhooks/order_created")
    assert wrong_method.status_code == 405 and wrong_method["Allow"] == "POST"
    assert stored() == []


def test_a_failed_key_is_retried_when_the_trigger_allows_it(hooks: str) -> None:
    webhook_sagas.FLAKY["77"] = 1
    event = {"invoice": {"id": 77, "amount": 5}}
    first = deliver("payment_due", event).json()
    settle()
    assert get(f"/webhooks/payment_due/status/{first['correlation_id']}").json()["status"] == "failed"

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        bodies = [r.json() for r in pool.map(lambda _: deliver("payment_due", event), range(10))]
    (retry,) = [b for b in bodies if b["status"] == "accepted"]
    assert retry["sagas"][0]["attempt"] == 1
    settle()
    assert get(f"/webhooks/payment_due/status/{retry['correlation_id']}").json()["status"] == "completed"
    assert sorted(r.status for r in stored(name="webhook_payment")) == [SagaStatus.COMPLETED, SagaStatus.FAILED]


@pytest.mark.parametrize("hooks", ["sqlite"], indirect=True)
def test_webhook_urlpatterns_take_their_own_options(hooks: str) -> None:
    accepted = deliver("payment_due", {"invoice": {"id": "x", "amount": 1}}, sign=False, prefix="open-hooks")
    assert accepted.status_code == 202, accepted.content
    unlisted = deliver("order_created", {"order_id": "O", "amount": 1}, sign=False, prefix="open-hooks")
    assert unlisted.status_code == 404
    settle()
    assert [r.status for r in stored()] == [SagaStatus.COMPLETED]


def test_bad_webhook_settings_are_named(django_configured: None) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from cqrs.integrations.django.webhooks import endpoint_from_settings

    assert endpoint_from_settings(None).verifier is None
    assert endpoint_from_settings({"secret": "s", "timestamp_header": None}).verifier is not None
    for raw, message in [
        ([], "must be a dict"),
        ({"SECRT": "s"}, "Unknown CQRS_SAGA_WEBHOOKS key"),
        ({"SECRET": "s", "ALGORITHM": "nope"}, "not an HMAC algorithm"),
        ({"MAX_BODY_BYTES": "big"}, "positive integer"),
    ]:
        with pytest.raises(ImproperlyConfigured, match=message):
            endpoint_from_settings(raw)
