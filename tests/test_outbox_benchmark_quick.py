"""benchmarks/bench_outbox.py runs (``--quick``) and measures what it claims: 4 commits a saga with or without
events, every message published by the relay and by the bare client. No speed is asserted (a loaded CI machine's
figures say nothing); run the benchmark itself for those."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_outbox.py"


@pytest.mark.slow
@pytest.mark.postgres
def test_quick_outbox_benchmark_counts_commits_and_messages(postgres_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--url", postgres_url, "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(out.read_text())
    rows = {(row["label"], row["concurrency"]): row for row in summary["commit"]["rows"]}
    assert set(rows) == {(label, level) for label in ("events", "direct", "plain") for level in (1, 16)}
    for key, row in rows.items():
        # Measured from pg_stat_database: an outbox row joins its step's commit, it adds none.
        assert row["commits_per_saga"] == pytest.approx(4.0, abs=0.05), (key, row)
        assert row["sagas_per_s"] > 0 and row["p50_ms"] > 0
    assert summary["commit"]["ratios"]["16"]["throughput"] > 0
    assert summary["commit"]["ratios_to_direct"]["1"]["p50_latency"] > 0
    relay = {(row["label"], row["workers"]): row for row in summary["relay"]["rows"]}
    assert set(relay) == {(label, workers) for label in ("relay", "bare") for workers in (1, 4)}
    assert all(row["messages_per_s"] > 0 for row in relay.values())
    assert summary["relay"]["messages"] == 300 and summary["relay"]["broker"] == "an in-memory broker"
