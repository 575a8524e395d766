"""python-cqrs's own saga example programs run unchanged against this package.

The programs live in ``../shared/compat/python-cqrs-examples/`` (python-cqrs
4.10's ``examples/saga*.py``, byte for byte); they are run in place, as
subprocesses whose working directory is a fresh temporary directory, exactly
as their users run them. Each test checks the exit status and the outcome the
program's own comments and prints describe.

What legitimately differs from python-cqrs's printed output (see
docs/migrating.md): the step history has one row per outcome (python-cqrs
also writes a ``started`` row before each), a compensated step's row says
``compensated`` (python-cqrs writes ``compensate: started`` then
``completed``), and the Mermaid text is this library's own.

``saga_fastapi_sse.py`` serves on 0.0.0.0 when run as a script, so it is
imported by path instead and its ``app`` driven with FastAPI's test client.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types
import typing
import uuid

import httpx
import pytest

from conftest import IN_CI

ROOT = pathlib.Path(__file__).parent.parent
COMPAT = pathlib.Path(os.environ.get("CQRS_COMPAT_DIR", ROOT.parent / "shared" / "compat"))
EXAMPLES = COMPAT / "python-cqrs-examples"
MERMAID_CHECKER = pathlib.Path(__file__).parent / "mermaid_check"

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
HISTORY_LINE = re.compile(r"^\s*\[\d{2}:\d{2}:\d{2}\] (\w+\.(?:act|compensate): \w+)$", re.M)


def example(name: str) -> pathlib.Path:
    """The path of one compat program (skipped locally, failed in CI, when the fixtures are missing)."""
    path = EXAMPLES / name
    if not path.is_file():
        message = f"python-cqrs compat example {path} is missing (../shared/compat is laid beside the repo)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_example(
    name: str, cwd: pathlib.Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a compat program unchanged, as a script, in ``cwd``; it must exit 0."""
    environment = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    environment["PYTHONIOENCODING"] = "utf-8"
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, str(example(name))],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )
    assert done.returncode == 0, (
        f"{name} exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def section(text: str, start: str, end: str | None = None) -> str:
    """The part of ``text`` from the line containing ``start`` up to the one containing ``end``."""
    begin = text.index(start)
    stop = text.index(end, begin) if end is not None else len(text)
    return text[begin:stop]


def assert_in_order(text: str, *parts: str) -> None:
    """Each of ``parts`` occurs in ``text``, each after the one before."""
    position = 0
    for part in parts:
        found = text.find(part, position)
        assert found >= 0, f"{part!r} not found after position {position} in:\n{text}"
        position = found + len(part)


def history(text: str) -> list[str]:
    """The ``Step.action: status`` lines of the execution logs the examples print, in order."""
    return HISTORY_LINE.findall(text)


# -- saga.py ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_saga_example_completes_then_compensates(tmp_path: pathlib.Path) -> None:
    out = run_example("saga.py", tmp_path).stdout

    first = section(out, "SCENARIO 1", "SCENARIO 2")
    saga_id = re.search(rf"Processing order order_123 \(saga_id: ({UUID})\)", first)
    assert saga_id is not None
    assert_in_order(
        first,
        "✓ Reserved items ['item_1', 'item_2'] for order order_123",
        "✓ Step completed: ReserveInventoryStep",
        "✓ Charged $99.99 for order order_123",
        "✓ Step completed: ProcessPaymentStep",
        "✓ Created shipment shipment_order_123 for order order_123",
        "✓ Step completed: ShipOrderStep",
        "✓ Saga completed successfully!",
        f"  - Saga ID: {saga_id[1]}",
        "  - Final status: completed",
        "  - Steps executed: 3",
        "* Inventory reservation: reservation_order_123",
        "* Payment ID: payment_order_123",
        "* Shipment ID: shipment_order_123",
    )
    assert history(first) == [
        "ReserveInventoryStep.act: completed",
        "ProcessPaymentStep.act: completed",
        "ShipOrderStep.act: completed",
    ]

    second = section(out, "SCENARIO 2", "EXAMPLE COMPLETED")
    saga_id = re.search(rf"Processing order order_456 \(saga_id: ({UUID})\)", second)
    assert saga_id is not None
    assert_in_order(
        second,
        "✓ Reserved items ['item_1'] for order order_456",
        "✓ Step completed: ReserveInventoryStep",
        "↻ Released items ['item_1'] from reservation reservation_order_456",
        "✗ Payment step failed: Payment amount exceeds limit",
        "✓ Compensation executed automatically!",
        f"  - Saga ID: {saga_id[1]}",
        "  - Final status: failed",
    )
    assert "Step completed: ProcessPaymentStep" not in second
    assert "Created shipment" not in second
    assert history(second) == [
        "ReserveInventoryStep.act: completed",
        "ProcessPaymentStep.act: failed",
        "ReserveInventoryStep.compensate: compensated",
    ]
    assert out.rstrip().endswith("=" * 70)
    assert "EXAMPLE COMPLETED" in out


# -- saga_fallback.py ---------------------------------------------------------------------------


@pytest.mark.slow
def test_saga_fallback_example_falls_back_and_the_open_breaker_skips_the_primary(tmp_path: pathlib.Path) -> None:
    done = run_example("saga_fallback.py", tmp_path)
    out = done.stdout
    scenarios = [("SCENARIO 1", "SCENARIO 2", 1), ("SCENARIO 2", "SCENARIO 3", 1), ("SCENARIO 3", "DEMO:", 0)]
    for start, end, called in scenarios:
        part = section(out, start, end)
        assert_in_order(
            part,
            "✓ Step completed: FallbackStep (source: fallback)",
            "✓ Saga completed successfully",
            f"- PrimaryStep.act() was called: {called} time(s)",
        )
        assert "CircuitBreakerError" not in part
    # The breaker opened after two failures: the third saga ran the fallback without calling the primary
    # (as python-cqrs does, whatever the program's closing comments say).
    assert "Total PrimaryStep.act() calls: 2" in out
    assert "order_001 (call #1)" in done.stderr
    assert "order_002 (call #2)" in done.stderr
    assert "order_003 (call" not in done.stderr
    assert "Executing fallback step for order order_003" in done.stderr
    # redis is a dev dependency: AioBreakerAdapter(storage_factory=...) is accepted in a saga definition.
    assert "✓ Successfully defined Saga with Redis-backed Circuit Breaker" in out
    assert "✅ EXAMPLE COMPLETED" in out


# -- saga_mermaid.py ----------------------------------------------------------------------------

MERMAID_BLOCK = re.compile(r"^```mermaid\n(.*?)^```$", re.S | re.M)
STEPS = ["ReserveInventoryStep", "ProcessPaymentStep", "ShipOrderStep"]


@pytest.mark.slow
def test_saga_mermaid_example_draws_every_step(tmp_path: pathlib.Path) -> None:
    out = run_example("saga_mermaid.py", tmp_path).stdout
    blocks = MERMAID_BLOCK.findall(out)
    kinds = [block.split("\n", 1)[0].strip() for block in blocks]
    assert kinds == ["sequenceDiagram", "classDiagram", "sequenceDiagram", "classDiagram"]
    for number, block in enumerate(blocks):
        for step in STEPS:
            assert step in block, f"diagram {number} does not name {step}:\n{block}"
    for block in blocks[2:]:  # the saga whose first step has a fallback
        assert "ReserveInventoryFallbackStep" in block
    for block in blocks[:2]:
        assert "Fallback" not in block
    assert "OrderContext" in blocks[1]
    assert "✅ EXAMPLE COMPLETED SUCCESSFULLY" in out

    results = parse_with_mermaid({f"diagram{number}": block for number, block in enumerate(blocks)})
    if results is None:
        return
    for number, kind in enumerate(kinds):
        result = results[f"diagram{number}"]
        assert result["ok"], f"diagram {number}: Mermaid {result['stage']} failed: {result['error']}"
        assert result["diagramType"] == ("sequence" if kind == "sequenceDiagram" else "classDiagram")


def parse_with_mermaid(diagrams: dict[str, str]) -> dict[str, typing.Any] | None:
    """Parse and render ``diagrams`` with the real Mermaid (tests/mermaid_check), or None if it is not installed.

    CI installs it (.ci/run); locally: ``npm install --prefix tests/mermaid_check``.
    """
    node = shutil.which("node")
    installed = all((MERMAID_CHECKER / "node_modules" / pkg / "package.json").exists() for pkg in ("mermaid", "jsdom"))
    if node is None or not installed:
        if IN_CI and shutil.which("npm") is not None:
            pytest.fail("the Mermaid checker is not installed; .ci/run installs it with npm")
        return None
    done = subprocess.run(
        [node, str(MERMAID_CHECKER / "check.mjs")],
        input=json.dumps(diagrams),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), f"Mermaid checker could not run:\n{done.stderr}"
    results: dict[str, typing.Any] = json.loads(done.stdout)["results"]
    return results


# -- saga_recovery.py ---------------------------------------------------------------------------


@pytest.mark.slow
def test_saga_recovery_example_finishes_forward_and_finishes_compensation(tmp_path: pathlib.Path) -> None:
    done = run_example("saga_recovery.py", tmp_path)
    out = done.stdout

    crashed = section(out, "SCENARIO 1", "SCENARIO 2")
    assert_in_order(
        crashed,
        "✓ Step completed: ReserveInventoryStep",
        "💥 SIMULATED SERVER CRASH!",
        "Saga state after interruption: running",
    )
    assert "Step completed: ProcessPaymentStep" not in crashed
    assert history(crashed) == ["ReserveInventoryStep.act: completed"]

    recovered = section(out, "SCENARIO 2", "SCENARIO 3")
    assert_in_order(
        recovered,
        "✓ Recovery completed successfully!",
        "  - Final status: completed",
        "* Inventory reservation: reservation_order_recovery_001",
        "* Payment ID: payment_order_recovery_001",
        "* Shipment ID: shipment_order_recovery_001",
    )
    assert history(recovered) == [
        "ReserveInventoryStep.act: completed",
        "ProcessPaymentStep.act: completed",
        "ShipOrderStep.act: completed",
    ]
    # Recovery skipped the reservation (reserved once) and ran the other two steps once each.
    assert done.stderr.count("Reserved items ['item_1', 'item_2'] for order order_recovery_001") == 1
    assert done.stderr.count("Charged $99.99 for order order_recovery_001") == 1
    assert done.stderr.count("Created shipment shipment_order_recovery_001") == 1

    interrupted = section(out, "SCENARIO 3", "SCENARIO 4")
    assert_in_order(
        interrupted,
        "✓ Step completed: ReserveInventoryStep",
        "✓ Step completed: ProcessPaymentStep",
        "Saga state after interruption: compensating",
    )
    assert history(interrupted) == ["ReserveInventoryStep.act: completed", "ProcessPaymentStep.act: completed"]

    compensated = section(out, "SCENARIO 4", "KEY TAKEAWAYS")
    assert_in_order(
        compensated,
        "✓ Compensation recovery completed!",
        "(RuntimeError is expected - forward execution not allowed)",
        "  - Final status: failed",
    )
    assert history(compensated) == [
        "ReserveInventoryStep.act: completed",
        "ProcessPaymentStep.act: completed",
        "ProcessPaymentStep.compensate: compensated",
        "ReserveInventoryStep.compensate: compensated",
    ]
    assert "Created shipment shipment_order_recovery_002" not in done.stderr  # never ran forward again
    assert "EXAMPLE COMPLETED" in out


# -- saga_recovery_scheduler.py -----------------------------------------------------------------


@pytest.mark.slow
def test_saga_recovery_scheduler_example_recovers_the_stale_saga_once(tmp_path: pathlib.Path) -> None:
    done = run_example("saga_recovery_scheduler.py", tmp_path)
    out, err = done.stdout, done.stderr
    saga_id = re.search(rf"Created interrupted saga ({UUID})", err)
    assert saga_id is not None
    assert_in_order(
        out,
        "Iteration 1 should recover the interrupted saga.",
        f"Final state of saga {saga_id[1]}:",
        "  Status: completed",
        "EXAMPLE COMPLETED",
    )
    # Iteration 1 found the saga (made stale through MemorySagaStorage._sagas[id]["updated_at"]) and
    # finished it from the second step; iterations 2 and 3 found nothing.
    assert_in_order(
        err,
        "Recovery iteration 1",
        f"Recovering saga {saga_id[1]}...",
        "✓ Charged $99.99 for order order_scheduler_demo",
        "✓ Created shipment shipment_order_scheduler_demo for order order_scheduler_demo",
        f"Saga {saga_id[1]} recovered successfully.",
        "Processed 1 saga(s) this iteration.",
        "Recovery iteration 2",
        "Recovery iteration 3",
        "Reached max_iterations=3, stopping.",
    )
    assert err.count("Processed 1 saga(s) this iteration.") == 1
    assert "Reserved items" not in err  # the reservation was recorded before the "crash"; not run again
    assert "failed" not in err.lower()


# -- saga_sqlalchemy_storage.py -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "database",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_saga_sqlalchemy_storage_example_persists_the_saga(
    database: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    env = {} if database == "sqlite" else {"DATABASE_URL": str(request.getfixturevalue(f"{database}_url"))}
    out = run_example("saga_sqlalchemy_storage.py", tmp_path, env).stdout
    assert re.search(rf"^Starting saga {UUID}\.\.\.$", out, re.M)
    assert_in_order(
        out,
        "Step completed: ProcessPaymentStep",
        "Step completed: ShipOrderStep",
        "Verifying persistence...",
        "Saga Status: completed",
        "Context Status: SHIPPED",
        "History Steps: 2",
        " - ProcessPaymentStep: completed",
        " - ShipOrderStep: completed",
    )
    if database == "sqlite":
        assert (tmp_path / "test.db").is_file()  # its default DATABASE_URL, in its working directory


# -- saga_fastapi_sse.py ------------------------------------------------------------------------

ORDER = {
    "order_id": "order_123",
    "user_id": "user_456",
    "items": ["item_1", "item_2"],
    "total_amount": 99.99,
    "shipping_address": "123 Main St, City, Country",
}


@pytest.fixture
def sse_app() -> typing.Iterator[types.ModuleType]:
    """The FastAPI example imported by path (never run as a script: it would serve on 0.0.0.0)."""
    path = example("saga_fastapi_sse.py")
    name = f"python_cqrs_example_saga_fastapi_sse_{uuid.uuid4().hex}"
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # the module calls logging.basicConfig
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]
        root.handlers[:] = handlers
        root.setLevel(level)


def sse_frames(body: str) -> list[dict[str, typing.Any]]:
    frames = [chunk for chunk in body.split("\n\n") if chunk.strip()]
    assert all(frame.startswith("data: ") for frame in frames), body
    return [json.loads(frame.removeprefix("data: ")) for frame in frames]


def client(app: typing.Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://example")


@pytest.mark.slow
async def test_saga_fastapi_sse_example_streams_a_saga_and_serves_its_history(sse_app: types.ModuleType) -> None:
    async with client(sse_app.app) as http:
        response = await http.post("/process-order", json=ORDER)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = sse_frames(response.text)
        saga_id = frames[0]["saga_id"]
        assert frames == [
            {"type": "start", "saga_id": saga_id, "total_steps": 3, "order_id": "order_123"},
            {
                "type": "step_progress",
                "step": {"name": "ReserveInventoryStep", "number": 1, "total": 3},
                "response": {"reservation_id": "reservation_order_123", "items_reserved": ["item_1", "item_2"]},
            },
            {
                "type": "step_progress",
                "step": {"name": "ProcessPaymentStep", "number": 2, "total": 3},
                "response": {
                    "payment_id": "payment_order_123",
                    "amount_charged": 99.99,
                    "transaction_id": "txn_000001",
                },
            },
            {
                "type": "step_progress",
                "step": {"name": "ShipOrderStep", "number": 3, "total": 3},
                "response": {"shipment_id": "shipment_order_123", "tracking_number": "TRACK00000001"},
            },
            {"type": "complete", "saga_id": saga_id, "order_id": "order_123", "total_steps": 3},
        ]

        stored = await http.get(f"/saga/{saga_id}/history")
        assert stored.status_code == 200
        body = stored.json()
        assert body["saga_id"] == saga_id
        assert body["status"] == "completed"
        # Stored under the context's own field names (python-cqrs stored camelCase keys).
        assert body["context"]["order_id"] == "order_123"
        assert body["context"]["inventory_reservation_id"] == "reservation_order_123"
        assert body["context"]["payment_id"] == "payment_order_123"
        assert body["context"]["shipment_id"] == "shipment_order_123"
        assert [(h["step_name"], h["action"], h["status"]) for h in body["history"]] == [
            ("ReserveInventoryStep", "act", "completed"),
            ("ProcessPaymentStep", "act", "completed"),
            ("ShipOrderStep", "act", "completed"),
        ]
        for entry in body["history"]:
            stamp = datetime.datetime.fromisoformat(entry["timestamp"])
            assert stamp.utcoffset() == datetime.timedelta(0)


@pytest.mark.slow
async def test_saga_fastapi_sse_example_streams_a_payment_failure_and_404s_an_unknown_saga(
    sse_app: types.ModuleType,
) -> None:
    failing = {**ORDER, "order_id": "order_9", "total_amount": 15000.0, "items": ["item_1"]}
    async with client(sse_app.app) as http:
        response = await http.post("/process-order", json=failing)
        assert response.status_code == 200
        frames = sse_frames(response.text)
        saga_id = frames[0]["saga_id"]
        assert frames == [
            {"type": "start", "saga_id": saga_id, "total_steps": 3, "order_id": "order_9"},
            {
                "type": "step_progress",
                "step": {"name": "ReserveInventoryStep", "number": 1, "total": 3},
                "response": {"reservation_id": "reservation_order_9", "items_reserved": ["item_1"]},
            },
            {
                "type": "error",
                "saga_id": saga_id,
                "message": "Payment amount exceeds limit",
                "error_type": "ValueError",
                "completed_steps": 1,
            },
        ]

        stored = (await http.get(f"/saga/{saga_id}/history")).json()
        assert stored["status"] == "failed"
        assert [(h["step_name"], h["action"], h["status"]) for h in stored["history"]] == [
            ("ReserveInventoryStep", "act", "completed"),
            ("ProcessPaymentStep", "act", "failed"),
            ("ReserveInventoryStep", "compensate", "compensated"),
        ]
        assert "Payment amount exceeds limit" in stored["history"][1]["details"]

        unknown = uuid.uuid4()
        missing = await http.get(f"/saga/{unknown}/history")
        assert missing.status_code == 404
        assert str(unknown) in missing.json()["detail"]
