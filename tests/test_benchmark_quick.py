"""The benchmark runs (``--quick``) and measures what it claims: 4 commits per saga, for engine and floor.

Only a smoke test: the figures of a loaded CI machine say nothing about the
targets, so no speed is asserted here; run benchmarks/bench_saga.py for that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_saga.py"


@pytest.mark.slow
@pytest.mark.postgres
def test_quick_benchmark_measures_four_commits_per_saga(postgres_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--url", postgres_url, "--json", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "targets (per-round medians):" in proc.stdout
    summary = json.loads(out.read_text())
    rows = {(row["label"], row["concurrency"]): row for row in summary["rows"]}
    assert set(rows) == {(label, level) for label in ("engine", "storage", "floor") for level in (1, 16)}
    for (label, level), row in rows.items():
        assert row["sagas"] == 100, (label, level)
        # Measured from pg_stat_database: start + one checkpoint per step, and nothing else.
        assert row["commits_per_saga"] == pytest.approx(4.0, abs=0.05), (label, level, row)
        assert row["sagas_per_s"] > 0 and row["p50_ms"] > 0 and row["cpu_ms_per_saga"] > 0
    for level in ("1", "16"):
        ratios = summary["ratios"][level]
        assert ratios["throughput"] > 0 and ratios["paired_throughput"] > 0 and ratios["paired_p50_latency"] > 0
    assert summary["targets"]["throughput"] == summary["ratios"]["16"]["paired_throughput"]


@pytest.mark.slow
def test_quick_sqlite_benchmark_counts_four_commits_per_saga_and_prints_the_aim(tmp_path: Path) -> None:
    """On SQLite the engine's commits are counted on its fast path's own connection (a sqlite3 trace callback)
    and through SQLAlchemy; the floor's by the script itself."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--sqlite", "--json", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "engine throughput >= 0.60 x bare aiosqlite floor: concurrency 1 " in proc.stdout
    summary = json.loads(out.read_text())
    rows = {(row["label"], row["concurrency"]): row for row in summary["rows"]}
    assert set(rows) == {(label, level) for label in ("engine", "storage", "floor") for level in (1, 16)}
    for (label, level), row in rows.items():
        assert row["sagas"] == 100, (label, level)
        assert row["commits_per_saga"] == pytest.approx(4.0, abs=0.05), (label, level, row)
    assert summary["targets"]["throughput"] == {
        level: summary["ratios"][level]["paired_throughput"] for level in ("1", "16")
    }


MEMORY_BENCH = BENCH.parent / "bench_memory.py"


def test_memory_benchmark_reports_framework_cost_per_step(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    proc = subprocess.run(
        [sys.executable, str(MEMORY_BENCH), "--sagas", "200", "--rounds", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "framework µs per step" in proc.stdout
    figures = json.loads(out.read_text())
    assert figures["sagas"] == 200
    assert figures["engine_sagas_per_s"] > 0 and figures["engine_us_per_saga"] > 0


def test_memory_benchmark_compares_against_another_interpreter(tmp_path: Path) -> None:
    """``--against`` (here the same interpreter): alternating rounds, each side the best of ``--inner`` timings."""
    out = tmp_path / "against.json"
    proc = subprocess.run(
        [sys.executable, str(MEMORY_BENCH), "--sagas", "100", "--rounds", "2", "--inner", "2",
         "--against", sys.executable, "--json", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(best of 2 each)" in proc.stdout and "median ratio" in proc.stdout
    figures = json.loads(out.read_text())
    assert len(figures["ratios"]) == 2 and all(ratio > 0 for ratio in figures["ratios"])


FAILURE_BENCH = BENCH.parent / "bench_failure.py"


@pytest.mark.slow
@pytest.mark.postgres
def test_failure_benchmark_measures_one_commit_less_with_compensations_together(
    postgres_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "failure.json"
    proc = subprocess.run(
        [sys.executable, str(FAILURE_BENCH), "--quick", "--url", postgres_url, "--json", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = json.loads(out.read_text())["concurrency"]["16"]
    # Start, two steps, the failure with compensation begun, then two compensations or one commit for both.
    assert row["each"]["commits_per_saga"] == pytest.approx(6.0, abs=0.2), row
    assert row["together"]["commits_per_saga"] == pytest.approx(5.0, abs=0.2), row
    assert row["ratio"] > 0


@pytest.mark.slow
@pytest.mark.postgres
def test_failure_benchmark_runs_a_base_commit_s_code_as_a_third_row(postgres_url: str, tmp_path: Path) -> None:
    """``--base COMMIT``: the base row runs that commit's ``src`` (checked out and removed again) with its own
    defaults (HEAD's: compensations together), every row a subprocess, and together / base is reported."""
    out = tmp_path / "failure.json"
    proc = subprocess.run(
        [sys.executable, str(FAILURE_BENCH), "--quick", "--base", "HEAD", "--url", postgres_url, "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(HEAD); every run a subprocess" in proc.stdout and "together / base:" in proc.stdout
    row = json.loads(out.read_text())["concurrency"]["16"]
    assert row["base"]["commits_per_saga"] == pytest.approx(5.0, abs=0.2), row
    assert row["each"]["commits_per_saga"] == pytest.approx(6.0, abs=0.2), row
    assert row["base_ratio"] > 0 and len(row["base_ratios"]) == 1
    worktrees = subprocess.run(["git", "-C", str(BENCH.parent.parent), "worktree", "list"], capture_output=True,
                               text=True, check=True).stdout
    assert "bench-failure-" not in worktrees


def test_failure_benchmark_names_a_base_it_cannot_check_out(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(FAILURE_BENCH), "--quick", "--base", "no-such-ref-for-cqrs", "--url",
         "postgresql+asyncpg://postgres@127.0.0.1:1/none"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot check out the base 'no-such-ref-for-cqrs'" in proc.stderr


GROUP_BENCH = BENCH.parent / "bench_group_commit.py"


@pytest.mark.slow
@pytest.mark.postgres
def test_quick_group_commit_benchmark_compares_with_the_floor_in_the_same_run(
    postgres_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "group.json"
    proc = subprocess.run(
        [sys.executable, str(GROUP_BENCH), "--quick", "--url", postgres_url, "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "same-run ratios, per-round medians" in proc.stdout
    summary = json.loads(out.read_text())
    rows = {(row["label"], row["concurrency"]): row for row in summary["rows"]}
    assert set(rows) == {(label, level) for label in ("group", "engine", "floor") for level in (16, 64, 256)}
    for (label, level), row in rows.items():
        assert row["sagas"] == 200, (label, level)
        assert row["sagas_per_s"] > 0 and row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"]
        if label == "group":
            # Measured from pg_stat_database: concurrent sagas share commits.
            assert row["commits_per_saga"] < 4.0, (label, level, row)
        else:
            assert row["commits_per_saga"] == pytest.approx(4.0, abs=0.05), (label, level, row)
    for level in ("16", "64", "256"):
        ratios = summary["ratios"][level]
        assert ratios["throughput_vs_floor"] > 0 and ratios["throughput_vs_engine"] > 0
        assert ratios["p50_vs_floor"] > 0 and ratios["p99_vs_engine"] > 0


RECOVERY_BENCH = BENCH.parent / "bench_recovery.py"


@pytest.mark.slow
@pytest.mark.postgres
def test_quick_recovery_benchmark_measures_commits_per_recovered_saga(postgres_url: str, tmp_path: Path) -> None:
    """`bench_recovery.py --quick` recovers its sagas both ways; a recovered saga costs its last step's commit
    and a share of a claim's (claims of many sagas are one statement), never the two commits of a claim each."""
    out = tmp_path / "recovery.json"
    proc = subprocess.run(
        [sys.executable, str(RECOVERY_BENCH), "--quick", "--base", "none", "--url", postgres_url, "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(out.read_text())
    assert summary["sagas"] == 200 and summary["concurrency"] == 16
    for mode in ("recover_saga", "worker"):
        figures = summary["modes"][mode]["current"]
        assert figures["median_sagas_per_s"] > 0 and figures["cpu_ms_per_saga"] > 0
        # Measured from pg_stat_database: one checkpoint each, plus the claims' shared commits.
        assert 1.0 <= figures["commits_per_saga"] < 1.9, (mode, figures)


@pytest.mark.slow
@pytest.mark.postgres
def test_quick_recovery_benchmark_on_group_commit_shares_the_checkpoints_commits(postgres_url: str,
                                                                               tmp_path: Path) -> None:
    """`--group-commit`: the worker's recovered sagas' last checkpoints share commits (fewer than one a saga)."""
    out = tmp_path / "recovery.json"
    proc = subprocess.run(
        [sys.executable, str(RECOVERY_BENCH), "--quick", "--base", "none", "--mode", "worker", "--group-commit",
         "--url", postgres_url, "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "current side on group commit" in proc.stdout
    figures = json.loads(out.read_text())["modes"]["worker"]["current"]
    assert 0 < figures["commits_per_saga"] < 1.0, figures
