"""The outbox and its relay where users turn them on: `SagaConfig` (and so FastAPI, Flask and Django), the
integration runtime, the ``cqrs-saga relay`` command and the recovery worker's ``--outbox``.

Each test proves one wiring on SQLite: what the config refuses, that a runtime's relay publishes what its
sagas' steps (and starts) wrote to the outbox and stops with the runtime, that the CLI relay publishes a
database's outbox through a broker named ``module:object``, and that a worker started with ``--outbox``
writes recovered steps' events to the outbox rather than dropping them.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import uuid

import pytest
from tests.outbox_broker import LedgerServer, MemoryBroker
from tests.outbox_saga import STEPS, CrashContext, CrashSaga, StepDone, Steps

from cqrs.config import SagaConfig, open_storage
from cqrs.integrations._runtime import SagaRuntime
from cqrs.outbox.models import OutboxStatus
from cqrs.saga.storage.enums import SagaStatus

TESTS = pathlib.Path(__file__).parent


def config_for(tmp_path: pathlib.Path, broker: MemoryBroker, **overrides: object) -> SagaConfig:
    options: dict[str, object] = {
        "storage_url": f"sqlite:///{tmp_path / 'sagas.sqlite3'}",
        "sagas": [CrashSaga],
        "container": Steps(tmp_path / "ledger"),
        "message_broker": broker,
        "outbox": True,
        "relay": True,
        "relay_interval": 30.0,  # a long poll: only the commits' wake-ups can publish in time
    }
    options.update(overrides)
    return SagaConfig(**options)  # type: ignore[arg-type]


def test_config_refuses_a_relay_without_an_outbox_or_a_broker() -> None:
    with pytest.raises(ValueError, match="needs OUTBOX"):
        SagaConfig(relay=True, message_broker=MemoryBroker())
    with pytest.raises(ValueError, match="message_broker"):
        SagaConfig(relay=True, outbox=True)
    read = SagaConfig.from_mapping({"OUTBOX": "true", "RELAY_INTERVAL": "0.5"})
    assert read.outbox and read.relay_interval == 0.5
    with pytest.raises(ValueError, match="RELAY_INTERVAL"):
        SagaConfig.from_mapping({"RELAY_INTERVAL": "-1"})
    with pytest.raises(ValueError, match="RELAY_INTERVAL must be a positive number"):
        SagaConfig.from_mapping({"RELAY_INTERVAL": "0"})


async def test_a_runtime_relay_publishes_steps_and_start_events_and_stops_with_the_runtime(
    tmp_path: pathlib.Path,
) -> None:
    broker = MemoryBroker()
    runtime = SagaRuntime(config_for(tmp_path, broker))
    try:
        await runtime.open()
        assert runtime.relay is not None and runtime.relay_task is not None
        announced = StepDone(event_name="order.accepted", topic="orders", payload={"order": 1})
        saga_id = await runtime.start_saga(CrashContext(order=1), events=[announced])
        assert await runtime.wait_idle(timeout=30)
        expected = ["order.accepted", *(f"{step}.done" for step in STEPS)]
        async with asyncio.timeout(30):  # woken by each commit, not by the 30 s poll
            while [m.headers["event-name"] for m in broker.sent if m.headers] != expected:
                await asyncio.sleep(0.01)
        assert {m.headers["saga-id"] for m in broker.sent if m.headers} == {str(saga_id)}
        health = await runtime.health()
        assert health["relay"] == {"published": 4, "failed": 0, "parked": 0}
    finally:
        relay_task = runtime.relay_task
        await runtime.aclose()
    assert relay_task is not None and relay_task.done() and not relay_task.cancelled()


async def test_without_the_outbox_a_start_with_events_is_refused(tmp_path: pathlib.Path) -> None:
    runtime = SagaRuntime(config_for(tmp_path, MemoryBroker(), outbox=False, relay=False))
    try:
        with pytest.raises(ValueError, match="outbox=True"):
            await runtime.start_saga(CrashContext(order=2), events=[StepDone(event_name="x", payload={})])
        assert runtime.relay is None
    finally:
        await runtime.aclose()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cqrs", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})}, cwd=TESTS.parent,
    )


async def test_the_cli_relay_publishes_a_databases_outbox(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'sagas.sqlite3'}"
    config = config_for(tmp_path, MemoryBroker(), relay=False)
    runtime = SagaRuntime(config)
    saga_id = await runtime.run_saga(CrashContext(order=3))
    await runtime.aclose()
    server = await LedgerServer().start()
    try:
        done = await asyncio.to_thread(
            cli, "relay", "--broker", "tests.outbox_broker:TcpBroker", "--url", url, "--once",
            env={"CQRS_TEST_BROKER": server.address},
        )
        assert done.returncode == 0, done.stderr
        assert "3 published" in done.stderr
        assert [d.headers["event-name"] for d in server.deliveries] == [f"{step}.done" for step in STEPS]
        assert {d.saga_id for d in server.deliveries} == {str(saga_id.saga_id)}
    finally:
        await server.stop()
    storage = await open_storage(url, create_tables=False)
    try:
        rows = await storage.list_outbox()  # type: ignore[attr-defined]
        assert [row.status for row in rows] == [OutboxStatus.PUBLISHED] * 3
    finally:
        await storage.close()
    refused = await asyncio.to_thread(cli, "relay", "--broker", "tests.no_such_module:Broker", "--url", url, "--once")
    assert refused.returncode == 2 and "no_such_module" in refused.stderr


async def test_a_worker_with_outbox_writes_recovered_steps_events_to_the_outbox(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'sagas.sqlite3'}"
    storage = await open_storage(url)
    config = config_for(tmp_path, MemoryBroker(), relay=False, storage=storage, lease_seconds=0.01)
    try:
        saga_id = uuid.uuid4()
        assert await config.mediator().record(CrashSaga, CrashContext(order=4), saga_id)  # its lease lapses at once
        env = {"CQRS_SAGA_OUTBOX": "true", "CQRS_OUTBOX_TEST_LEDGER": str(tmp_path / "ledger")}
        done = await asyncio.to_thread(
            cli, "worker", "--app", "tests.test_outbox_wiring:worker_app", "--url", url, "--once", env=env
        )
        assert done.returncode == 0, done.stderr
        stored = await storage.get_saga(saga_id)
        assert stored is not None and stored.status == SagaStatus.COMPLETED
        rows = await storage.list_outbox(saga_id=saga_id)  # type: ignore[attr-defined]
        assert [row.headers["event-name"] for row in rows] == [f"{step}.done" for step in STEPS]
    finally:
        await storage.close()


def worker_app() -> object:
    """The worker's ``--app``: the crash saga's map (the CLI builds its steps with a plain container, so their
    ledger comes from the environment)."""
    from tests import outbox_saga

    outbox_saga._Step.ledger = os.environ["CQRS_OUTBOX_TEST_LEDGER"]
    return outbox_saga.saga_map()
