"""benchmarks/compare.py: the noise rule, and a smoke run of HEAD against the working tree (memory benchmark only).

No speed is asserted: one round on a CI machine says nothing; the smoke run checks that each side imports
its own ``cqrs``, that both sides' figures are read, and that the temporary worktree is gone afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "benchmarks" / "compare.py"


def _compare_module() -> typing.Any:
    spec = importlib.util.spec_from_file_location("bench_compare", COMPARE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def test_a_ratio_is_a_regression_only_beyond_the_spread_between_rounds() -> None:
    compare = _compare_module()
    # Lower is better; the sides vary by 10 % and 5 % between their own rounds: tolerance 10 %.
    within = compare.judge("lower", [10.0, 11.0, 10.5], [10.5, 11.5, 10.6])
    assert within["tolerance"] == pytest.approx(0.10)
    assert within["ratio"] == pytest.approx(statistics.median([10.5 / 10.0, 11.5 / 11.0, 10.6 / 10.5]))
    assert within["verdict"] == "within noise"
    assert compare.judge("lower", [10.0, 11.0, 10.5], [12.5, 13.0, 12.6])["verdict"] == "REGRESSION"
    assert compare.judge("lower", [10.0, 11.0, 10.5], [8.0, 8.2, 8.1])["verdict"] == "better"
    # Higher is better: the same distance in log scale, so 1/1.1 is still within a 10 % spread.
    assert compare.judge("higher", [100.0, 110.0], [100.0 / 1.09, 110.0 / 1.09])["verdict"] == "within noise"
    assert compare.judge("higher", [100.0, 110.0], [100.0 / 1.11, 110.0 / 1.11])["verdict"] == "REGRESSION"
    # Two copies of the same code differ by a few per cent whatever the spread: the tolerance has a floor.
    assert compare.judge("lower", [10.0, 10.01], [10.2, 10.21])["tolerance"] == compare.MIN_TOLERANCE
    assert compare.judge("lower", [10.0, 10.01], [10.2, 10.21])["verdict"] == "within noise"
    # One round has no spread: nothing is judged; the control row is never judged.
    assert compare.judge("lower", [10.0], [20.0])["verdict"] == "spread unknown"
    assert compare.judge("control", [10.0, 11.0], [20.0, 22.0])["verdict"] == "control"
    # A side that failed has no pair.
    assert compare.judge("lower", [10.0, 11.0], [])["verdict"] == "no pair"


def _git_checkout() -> bool:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "HEAD"], capture_output=True, check=False)
    return proc.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _git_checkout(), reason="needs a git checkout with a HEAD commit")
def test_compare_runs_head_against_the_working_tree(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    proc = subprocess.run(
        [sys.executable, str(COMPARE), "--base", "HEAD", "--only", "memory", "--rounds", "1", "--sagas", "200",
         "--bench-rounds", "1", "--python", sys.executable, "--json", str(out)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(out.read_text(encoding="utf-8"))
    base_cqrs, current_cqrs = Path(summary["base"]["cqrs"]), Path(summary["current"]["cqrs"])
    assert current_cqrs == ROOT / "src" / "cqrs" / "__init__.py"
    assert base_cqrs.parts[-3:] == ("src", "cqrs", "__init__.py") and not base_cqrs.is_relative_to(ROOT)
    assert not base_cqrs.exists(), "the temporary worktree is removed at the end"
    assert str(base_cqrs.parent.parent.parent) not in subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True).stdout
    memory = summary["benches"]["memory"]
    assert memory["errors"] == {}
    per_step = memory["metrics"]["framework µs/step"]
    assert len(per_step["base"]) == len(per_step["current"]) == 1 and per_step["ratio"] > 0
    assert per_step["verdict"] == "spread unknown"  # one round: no noise measured, nothing judged
    assert "NOT JUDGED" in summary["verdict"]
