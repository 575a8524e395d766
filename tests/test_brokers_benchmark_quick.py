"""benchmarks/bench_brokers.py runs (``--quick``) against the real brokers and measures what it claims: for each
broker, every message published by the relay through the adapter and by the bare client (the broker holds them
all; the benchmark checks), and their same-run ratio. No speed is asserted; run the benchmark itself for those."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from broker_kits import SERVICES
from conftest import require_service

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_brokers.py"


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.rabbitmq
@pytest.mark.redis
@pytest.mark.nats
def test_quick_broker_benchmark_publishes_every_message_both_ways(postgres_url: str, tmp_path: Path) -> None:
    for label, (host, port) in SERVICES.values():
        require_service(label, host, port)
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--url", postgres_url, "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(out.read_text())
    assert summary["messages"] == 300
    assert set(summary["brokers"]) == {"rabbitmq", "redis", "nats"}
    for name, figures in summary["brokers"].items():
        rows = {(row["label"], row["workers"]): row for row in figures["rows"]}
        assert set(rows) == {(label, workers) for label in ("relay", "bare") for workers in (1, 4)}, name
        assert all(row["messages_per_s"] > 0 for row in rows.values()), name
        assert all(figures["ratios"][w]["throughput"] > 0 for w in ("1", "4")), name
