"""The code of the seed document (../shared/seeds/004_*.txt) runs as written.

The seed snippets live in tests/seed/ with only the pieces the page leaves out
added (marked ``# --- completion``).
"""

from __future__ import annotations

import importlib
import pathlib
import sys
import types
import typing

import pytest

from cqrs.saga.storage.enums import SagaStatus

SEED_DIR = pathlib.Path(__file__).parent / "seed"


@pytest.fixture
def seed() -> typing.Iterator[typing.Callable[[str], types.ModuleType]]:
    """Import a fresh copy of a seed module (and its seed imports) for each test."""
    sys.path.insert(0, str(SEED_DIR))

    def load(name: str) -> types.ModuleType:
        return importlib.import_module(name)

    try:
        yield load
    finally:
        sys.path.remove(str(SEED_DIR))
        for name in [n for n in sys.modules if n.startswith("seed_")]:
            del sys.modules[name]


async def test_basic_saga_example_runs(
    seed: typing.Callable[[str], types.ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    basic = seed("seed_basic")
    saga_id = await basic.main()
    assert capsys.readouterr().out.splitlines() == [
        "Step completed: ReserveInventoryStep",
        "Step completed: ProcessPaymentStep",
    ]
    assert basic.LEDGER == ["reserve:123", "charge:123"]
    status, context, _ = await basic.storage.load_saga_state(saga_id)
    assert status == SagaStatus.COMPLETED
    assert context["inventory_reservation_id"] == "reservation-123"
    assert context["payment_id"] == "payment-123"


async def test_recovery_example_finishes_the_interrupted_saga(
    seed: typing.Callable[[str], types.ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    recovery = seed("seed_recovery")
    basic = seed("seed_basic")
    await recovery.main()
    assert capsys.readouterr().out.strip() == "Saga recovered successfully!"
    # Each step ran once: the reservation before the interruption, the payment during recovery.
    assert basic.LEDGER == ["reserve:recover-me", "charge:recover-me"]
    status, _, _ = await basic.storage.load_saga_state(recovery.INTERRUPTED_ID)
    assert status == SagaStatus.COMPLETED


async def test_fallback_example_runs_the_fallback(
    seed: typing.Callable[[str], types.ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    fallback = seed("seed_fallback")
    results = await fallback.main()
    assert capsys.readouterr().out.strip() == "Step: FallbackStep"
    assert results[0].response.source == "fallback"
    assert results[0].response.reservation_id == "fallback_reservation_123"
