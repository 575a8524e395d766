"""Prometheus metrics scraped over HTTP from a FastAPI, a Flask and a Django app after a mixed run."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cqrs.telemetry import metrics

APP = Path(__file__).parent / "telemetry_metrics_app.py"

# What the app's mixed run must have counted (see telemetry_metrics_app.mixed_run).
EXPECTED = {
    "cqrs_sagas_started_total": 8,  # 3 ok, 2 declined, crashed, lost, stuck
    "cqrs_sagas_completed_total": 5,  # 3 ok, crashed and lost once recovered
    "cqrs_sagas_failed_total": 2,
    "cqrs_sagas_compensation_failed_total": 2,  # stuck, and again when recovery retried it
    "cqrs_sagas_parked_total": 1,
    "cqrs_sagas_resumed_total": 3,  # crashed, lost, stuck
    "cqrs_recovery_claims_total": 4,  # crashed, lost, stuck twice
    "cqrs_lease_losses_total": 1,
}


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


@pytest.fixture(params=["fastapi", "flask", "django"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> typing.Iterator[str]:
    """The app of one framework, running; yields its base URL."""
    log = (tmp_path / "app.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(APP), request.param], stdout=subprocess.PIPE, stderr=log, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready "), (line, (tmp_path / "app.log").read_text())
        yield f"http://127.0.0.1:{line.split()[1]}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


@pytest.mark.slow
def test_metrics_of_a_mixed_run_are_scraped_over_http(served: str) -> None:
    response = httpx.get(f"{served}/metrics", follow_redirects=True, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    for name, count in EXPECTED.items():
        assert found.get((name, (("saga", "ShopSaga"),))) == count, name
    assert found[("cqrs_outbox_backlog", ())] == 7
    # One observation per attempt: reserve ran once in each of the 8 sagas (the crashed one's completion
    # was recorded before the crash, so its recovery went on from charge).
    reserve_ok = (("action", "act"), ("outcome", "ok"), ("saga", "ShopSaga"), ("step", "reserve"))
    assert found[("cqrs_step_duration_seconds_count", reserve_ok)] == 8
    charge_ok = (("action", "act"), ("outcome", "ok"), ("saga", "ShopSaga"), ("step", "charge"))
    assert found[("cqrs_step_duration_seconds_count", charge_ok)] == 7  # 3 ok, crashed, lost twice, stuck
    charge_declined = (("action", "act"), ("outcome", "error"), ("saga", "ShopSaga"), ("step", "charge"))
    assert found[("cqrs_step_duration_seconds_count", charge_declined)] == 2


@pytest.mark.slow
def test_openmetrics_is_served_when_asked_for(served: str) -> None:
    response = httpx.get(
        f"{served}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        follow_redirects=True, timeout=30,
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_metrics_of_one_registry_are_made_once() -> None:
    registry = CollectorRegistry()
    first, second = metrics.SagaMetrics(registry), metrics.SagaMetrics(registry)
    assert first._metrics is second._metrics
    body, content_type = metrics.render(registry)
    assert b"cqrs_sagas_started_total" in body and content_type.startswith("text/plain")


async def test_watch_outbox_backlog_keeps_the_gauge_at_the_storages_count(tmp_path: Path) -> None:
    import asyncio

    from tests.outbox_saga import CrashContext, StepDone, Steps, saga_map

    from cqrs.saga.mediator import SagaMediator
    from cqrs.saga.storage.memory import MemorySagaStorage

    storage = MemorySagaStorage()
    mediator = SagaMediator(saga_map(), Steps(tmp_path / "ledger"), storage=storage, outbox=True)
    await mediator.start(CrashContext(order=1), events=[StepDone(event_name=name, payload={}) for name in "ab"])
    registry = CollectorRegistry()
    watcher = asyncio.ensure_future(metrics.SagaMetrics(registry).watch_outbox_backlog(storage, interval=0.01))
    try:
        async with asyncio.timeout(10):
            while registry.get_sample_value("cqrs_outbox_backlog") != 2:
                await asyncio.sleep(0.01)
    finally:
        watcher.cancel()
    with pytest.raises(ValueError, match="interval"):
        await metrics.SagaMetrics(CollectorRegistry()).watch_outbox_backlog(storage, interval=0)
