"""Before and after in one run: the benchmarks of a git ref against the working tree, alternating.

    .venv/bin/python benchmarks/compare.py                        # 5b62f0f vs the working tree: memory + PostgreSQL
    .venv/bin/python benchmarks/compare.py --base HEAD --rounds 5
    .venv/bin/python benchmarks/compare.py --only memory --only sqlite
    .venv/bin/python benchmarks/compare.py --seconds 2 --concurrency 1,16 --json compare.json

The base ref is checked out into a temporary ``git worktree`` (removed at the
end). Each round runs every benchmark script as a subprocess once per side,
alternating which side goes first from round to round, so drift of the
machine's speed hits both alike:

- base: ``PYTHONPATH=<worktree>/src`` and the worktree's copy of the script;
- current: ``PYTHONPATH=<this checkout>/src`` and the current script.

Both use the same interpreter (this checkout's ``.venv``); PYTHONPATH comes
before the venv's editable install, and the ``cqrs`` each side imports is
printed before anything is measured.

Per metric: the median of each side over the rounds, and current/base as the
median of the per-round ratios. The noise is the spread between rounds of the
same code (max/min - 1 of each side's figures); a ratio within the larger of
the two spreads (at least 3 %) cannot be told from the machine's drift, so
only a ratio worse than that is a regression. A run during which someone edits
the working tree is flagged and not judged. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "5b62f0f"
DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/cqrs_compare"
BENCHES = ("memory", "saga", "sqlite")
DEFAULT_BENCHES = ("memory", "saga")

HIGHER, LOWER, CONTROL = "higher", "lower", "control"

#: The least tolerance. Measured: the same commit in two directories (``--base HEAD`` on a clean checkout), a quiet
#: machine, bench_memory, 3 rounds: the side in the worktree was 1-3 % slower in every round while each side's
#: spread was 1 %: where the code lies (paths, file layout, memory layout) biases a run by that much.
MIN_TOLERANCE = 0.03


@dataclasses.dataclass
class Side:
    name: str  # "base" or "current"
    root: Path
    description: str
    cqrs_file: str | None = None
    import_error: str | None = None
    fingerprint: str = ""  # of its code when the comparison started
    changed: list[str] = dataclasses.field(default_factory=list)  # runs during which its code was not that code

    def code_fingerprint(self) -> str:
        """A hash of ``src/**/*.py`` and ``benchmarks/bench_*.py``: others may be editing the working tree."""
        digest = hashlib.sha256()
        for path in sorted([*self.src.rglob("*.py"), *(self.root / "benchmarks").glob("bench_*.py")]):
            digest.update(str(path.relative_to(self.root)).encode())
            try:
                digest.update(path.read_bytes())
            except OSError:  # removed since the listing
                digest.update(b"\0missing")
        return digest.hexdigest()[:12]

    @property
    def src(self) -> Path:
        return self.root / "src"


@dataclasses.dataclass
class Bench:
    key: str
    script: str
    metrics: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> direction, in the order seen
    #: side -> metric -> one figure per round (a side stops at its first failure, so the lists stay aligned)
    values: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)  # side -> why it has no (more) figures
    notes: list[str] = dataclasses.field(default_factory=list)
    args: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # side -> command-line options


# --------------------------------------------------------------------------------------------------- reading figures


def memory_figures(data: dict[str, typing.Any]) -> dict[str, tuple[float, str]]:
    """bench_memory.py --json: framework µs per step and engine µs per saga (best of its rounds)."""
    return {
        "framework µs/step": (float(data["framework_us_per_step"]), LOWER),
        "engine µs/saga": (float(data["engine_us_per_saga"]), LOWER),
    }


def saga_figures(data: dict[str, typing.Any]) -> dict[str, tuple[float, str]]:
    """bench_saga.py --json: per concurrency, engine sagas/s, engine/floor ratios, CPU; floor sagas/s as a control.

    The ratios are the script's per-round medians (``paired_*``) where it has them, else its best-of-rounds ones.
    """
    rows = {(row["label"], int(row["concurrency"])): row for row in data["rows"]}
    figures: dict[str, tuple[float, str]] = {}
    for level_key, ratios in sorted(data["ratios"].items(), key=lambda item: int(item[0])):
        level = int(level_key)
        engine, floor = rows[("engine", level)], rows[("floor", level)]
        figures[f"c={level} engine sagas/s"] = (float(engine["sagas_per_s"]), HIGHER)
        figures[f"c={level} engine/floor throughput"] = (
            float(ratios.get("paired_throughput", ratios["throughput"])), HIGHER)
        figures[f"c={level} engine/floor p50 latency"] = (
            float(ratios.get("paired_p50_latency", ratios["p50_latency"])), LOWER)
        figures[f"c={level} engine CPU ms/saga"] = (float(engine["cpu_ms_per_saga"]), LOWER)
        figures[f"c={level} floor sagas/s (control)"] = (float(floor["sagas_per_s"]), CONTROL)
    return figures


SCRIPTS = {"memory": "bench_memory.py", "saga": "bench_saga.py", "sqlite": "bench_saga.py"}
READERS = {"memory": memory_figures, "saga": saga_figures, "sqlite": saga_figures}


# --------------------------------------------------------------------------------------------------- judging


def spread(values: list[float]) -> float | None:
    """max/min - 1 of one side's figures over the rounds: how much runs of the same code vary on this machine."""
    if len(values) < 2 or min(values) <= 0:
        return None
    return max(values) / min(values) - 1


def judge(direction: str, base: list[float], current: list[float]) -> dict[str, typing.Any]:
    """Medians, the median of the per-round current/base ratios, the spreads and a verdict for one metric.

    Tolerance: the larger spread of the two sides, at least ``MIN_TOLERANCE``. A ratio r is within noise if
    ``1/(1+tol) <= r <= 1+tol`` on the worse side (the same distance both ways in log scale).
    """
    # Round i of one side pairs with round i of the other (they ran seconds apart).
    ratios = [c / b for b, c in zip(base, current, strict=False) if b > 0]
    spreads = (spread(base), spread(current))
    known = [value for value in spreads if value is not None]
    tolerance = max(*known, MIN_TOLERANCE) if len(known) == 2 else None
    ratio = statistics.median(ratios) if ratios else None
    result: dict[str, typing.Any] = {
        "direction": direction, "base": base, "current": current,
        "base_median": statistics.median(base) if base else None,
        "current_median": statistics.median(current) if current else None,
        "ratios": ratios, "ratio": ratio,
        "spread_base": spreads[0], "spread_current": spreads[1], "tolerance": tolerance,
    }
    if ratio is None:
        result["verdict"] = "no pair"
    elif direction == CONTROL:
        result["verdict"] = "control"
    elif tolerance is None:
        result["verdict"] = "spread unknown"  # fewer than 2 rounds on a side
    else:
        # log(ratio) > 0 means current is worse.
        worse = math.log(ratio) if direction == LOWER else -math.log(ratio)
        bound = math.log1p(tolerance)
        result["verdict"] = "REGRESSION" if worse > bound else "better" if worse < -bound else "within noise"
    return result


# --------------------------------------------------------------------------------------------------- running


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def side_env(side: Side) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(side.src), os.environ.get("PYTHONPATH")]))
    env.pop("CQRS_BENCH_URL", None)  # the database is chosen here (--url), the same for both sides
    return env


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


WHICH_CQRS = """\
import importlib.util, sys
spec = importlib.util.find_spec("cqrs")
print(spec.origin if spec else "not found", flush=True)
import cqrs
print(cqrs.__file__)
"""


def check_import(python: str, side: Side) -> None:
    """Print which ``cqrs`` the side imports; refuse to measure if it is not the side's own."""
    proc = subprocess.run([python, "-c", WHICH_CQRS], capture_output=True, text=True, env=side_env(side),
                          cwd=side.root, check=False)
    lines = proc.stdout.splitlines()
    origin = lines[0] if lines else "not found"
    side.cqrs_file = origin
    if not Path(origin).resolve().is_relative_to(side.src.resolve()):
        raise SystemExit(f"{side.name}: imports cqrs from {origin}, not from {side.src}: the comparison would be void")
    if proc.returncode != 0:
        side.import_error = f"`import cqrs` failed (exit {proc.returncode}):\n{tail(proc.stderr)}"
    failing = "  (IMPORT FAILS)" if side.import_error else ""
    print(f"  {side.name:8} cqrs: {origin} (code {side.fingerprint}){failing}")


def options_of(python: str, side: Side, script: Path) -> set[str] | str:
    """The script's long options, read from its ``--help``; a string says why they could not be read."""
    if not script.exists():
        return f"{script.relative_to(side.root)} does not exist in {side.description}"
    proc = subprocess.run([python, str(script), "--help"], capture_output=True, text=True, env=side_env(side),
                          cwd=side.root, check=False)
    if proc.returncode != 0:
        return f"{script.name} --help failed (exit {proc.returncode}):\n{tail(proc.stderr)}"
    usage = proc.stdout.split("\n\n", 1)[0]  # argparse's usage block lists every option; the description may
    return set(re.findall(r"\[(--[a-z][a-z0-9-]*)", usage))  # show options of other versions in its examples


RECREATE_DB = """\
import asyncio, sys
import asyncpg

async def main(dsn, name, create):
    admin = await asyncpg.connect(dsn + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "create"))
"""


def recreate_database(python: str, url: str, *, create: bool = True) -> None:
    """A fresh database for every bench_saga run: the two sides' storages may create different tables."""
    server, name = url.split("://", 1)[1].rsplit("/", 1)
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise SystemExit(f"--url: database name {name!r} must be letters, digits and underscores")
    subprocess.run([python, "-c", RECREATE_DB, f"postgresql://{server}", name, "create" if create else "drop"],
                   check=True, capture_output=True, text=True)


def plan(bench: Bench, sides: list[Side], python: str, args: argparse.Namespace) -> None:
    """Each side's command-line options for this benchmark, feature-detected from its ``--help``."""
    wanted: dict[str, str | None] = {}
    if args.sagas is not None:
        wanted["--sagas"] = str(args.sagas)
    if args.bench_rounds is not None:
        wanted["--rounds"] = str(args.bench_rounds)
    if bench.key in ("saga", "sqlite"):
        if args.seconds is not None:
            wanted["--seconds"] = str(args.seconds)
        if args.concurrency is not None:
            wanted["--concurrency"] = args.concurrency
    if bench.key == "saga":
        wanted["--url"] = args.url
    if bench.key == "sqlite":
        wanted["--sqlite"] = None
    found: dict[str, set[str]] = {}
    for side in sides:
        if side.import_error:
            bench.errors[side.name] = side.import_error
            continue
        options = options_of(python, side, side.root / "benchmarks" / bench.script)
        if isinstance(options, str):
            bench.errors[side.name] = options
            continue
        missing = ({"--json", "--sqlite"} if bench.key == "sqlite" else {"--json"}) - options
        if missing:
            bench.errors[side.name] = f"{bench.script} in {side.description} has no {', '.join(sorted(missing))}"
            continue
        found[side.name] = options
    for option in list(wanted):
        lacking = [name for name, options in found.items() if option not in options]
        if lacking and option != "--url":
            # Passing it to one side only would measure the two sides differently.
            bench.notes.append(f"{option} is not an option of {bench.script} on {', '.join(lacking)}: not passed to "
                               f"either side")
            del wanted[option]
    for name, options in found.items():
        argv: list[str] = []
        for option, value in wanted.items():
            if option == "--url" and option not in options:
                bench.notes.append(f"{bench.script} on {name} has no --url: it uses its own default database")
                continue
            argv += [option] if value is None else [option, value]
        bench.args[name] = argv


def run_once(bench: Bench, side: Side, python: str, url: str, workdir: Path, round_number: int, rounds: int,
             verbose: bool) -> None:
    """One run of one benchmark on one side; its figures are appended, or the side's error recorded."""
    label = f"{round_number}/{rounds}"
    out = workdir / f"{bench.key}-{side.name}-round{round_number}.json"
    argv = [python, str(side.root / "benchmarks" / bench.script), *bench.args[side.name], "--json", str(out)]
    if bench.key == "saga" and "--url" in bench.args[side.name]:
        recreate_database(python, url)
    before = side.code_fingerprint()
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=side_env(side), cwd=side.root, check=False)
    took = time.monotonic() - started
    if {before, side.code_fingerprint()} != {side.fingerprint}:
        side.changed.append(f"{bench.key} round {label}")
        print(f"  {label:>5} {bench.key:6} {side.name:8} WARNING: {side.root} changed (src/ or benchmarks/) since the "
              "comparison started: this run measured other code", flush=True)
    out.with_suffix(".log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if verbose:
        print(proc.stdout.rstrip())
    figures: dict[str, tuple[float, str]] | None = None
    if proc.returncode != 0:
        error = f"{bench.script} exited {proc.returncode} in round {label}:\n{tail(proc.stderr or proc.stdout)}"
    else:
        try:
            figures = READERS[bench.key](json.loads(out.read_text(encoding="utf-8")))
        except Exception as exc:  # an older script's JSON: report it, do not crash the comparison
            error = f"could not read {bench.script}'s --json output in round {label}: {exc!r}"
    if figures is None:
        bench.errors[side.name] = error
        print(f"  {label:>5} {bench.key:6} {side.name:8} FAILED after {took:.1f} s: {error.splitlines()[-1]}"
              " (the output's end is shown below the table)", flush=True)
        return
    values = bench.values.setdefault(side.name, {})
    for name, (value, direction) in figures.items():
        bench.metrics.setdefault(name, direction)
        values.setdefault(name, []).append(value)
    head = next(iter(figures))
    print(f"  {label:>5} {bench.key:6} {side.name:8} {took:6.1f} s   {head}: {figures[head][0]:.4g}", flush=True)


def snapshot(side: Side, into: Path) -> Side:
    """A copy of the side's ``src/`` and ``benchmarks/``, taken while nobody changed them (retried up to 5 times)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for _ in range(5):
        before = side.code_fingerprint()
        shutil.rmtree(into, ignore_errors=True)
        for part in ("src", "benchmarks"):
            shutil.copytree(side.root / part, into / part, ignore=ignore)
        copy = Side(side.name, into, f"a snapshot of {side.description}")
        if before == side.code_fingerprint() == copy.code_fingerprint():
            return copy
        time.sleep(1)
    raise SystemExit(f"{side.root} kept changing while it was copied: no snapshot")


def shorten(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def indent(text: str) -> str:
    return "\n".join("      | " + line for line in text.splitlines())


# --------------------------------------------------------------------------------------------------- reporting


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def report(benches: list[Bench], rounds: int, sides: list[Side]) -> dict[str, typing.Any]:
    """Print the comparison table; return it with the overall verdict."""
    results: dict[str, typing.Any] = {}
    regressions: list[str] = []
    unjudged: list[str] = []
    header = (f"{'metric':44} {'base':>8} {'current':>8} {'cur/base':>8}  {'per-round ratios':18} "
              f"{'spread b / c':>13} {'tol':>5}  verdict")
    print("\n" + header)
    print("-" * len(header))
    for bench in benches:
        metrics = {}
        for name, direction in bench.metrics.items():
            base = bench.values.get("base", {}).get(name, [])
            current = bench.values.get("current", {}).get(name, [])
            result = judge(direction, base, current)
            metrics[name] = result
            arrow = {HIGHER: "↑", LOWER: "↓", CONTROL: " "}[direction]
            ratios = " ".join(f"{ratio:.2f}" for ratio in result["ratios"])
            print(f"{bench.key + ': ' + name + ' ' + arrow:44} {_num(result['base_median']):>8} "
                  f"{_num(result['current_median']):>8} {_num(result['ratio']):>8}  {ratios:18} "
                  f"{_pct(result['spread_base']) + ' / ' + _pct(result['spread_current']):>13} "
                  f"{_pct(result['tolerance']):>5}  {result['verdict']}")
            if result["verdict"] == "REGRESSION":
                regressions.append(f"{bench.key}: {name}")
            elif result["verdict"] in ("spread unknown", "no pair"):
                unjudged.append(f"{bench.key}: {name}")
        results[bench.key] = {"script": bench.script, "args": bench.args, "errors": bench.errors,
                              "notes": bench.notes, "metrics": metrics}
    print("↑ higher is better, ↓ lower is better; base/current: medians over the rounds; cur/base: median of the "
          "per-round ratios;\nspread: max/min - 1 of a side's own figures over the rounds; tol: the larger spread, "
          f"at least {MIN_TOLERANCE:.0%} (what two copies of the same code differ by).")
    for bench in benches:
        for note in bench.notes:
            print(f"note ({bench.key}): {note}")
        for name, error in bench.errors.items():
            kept = "" if bench.values.get(name) else " (no figures)"
            print(f"\n{bench.key}: the {name.upper()} side FAILED{kept}; the other side's figures are kept:\n"
                  + indent(error))
    failed = [f"{bench.key} ({', '.join(bench.errors)})" for bench in benches if bench.errors]
    changed = [f"{side.name}: {', '.join(side.changed)}" for side in sides if side.changed]
    for side in sides:
        if side.changed:
            print(f"\nthe {side.name.upper()} side's code changed during the comparison (someone edited {side.root}); "
                  f"runs that measured other code: {', '.join(side.changed)}. --snapshot measures a copy instead.")
    if changed:
        verdict = f"NOT JUDGED: the code changed during the run ({'; '.join(changed)})"
    elif failed:
        verdict = f"NOT JUDGED: a side failed: {'; '.join(failed)}"
    elif regressions:
        verdict = f"REGRESSION beyond noise: {'; '.join(regressions)}"
    elif unjudged or rounds < 2:
        verdict = "NOT JUDGED: the noise needs at least 2 rounds per side"
    else:
        verdict = "no regression beyond noise"
    print(f"\nverdict: {verdict}")
    return {"benches": results, "verdict": verdict, "regressions": regressions, "failed": failed, "changed": changed}


# --------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    python = args.python
    only = tuple(dict.fromkeys(args.only)) if args.only else DEFAULT_BENCHES
    try:
        commit = git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    except subprocess.CalledProcessError as exc:
        print(f"--base {args.base}: not a commit here: {exc.stderr.strip()}", file=sys.stderr)
        return 2
    head = git("rev-parse", "--short", "HEAD")
    dirty = len(git("status", "--porcelain", "--", "src", "benchmarks").splitlines())
    workdir = Path(tempfile.mkdtemp(prefix="cqrs-compare-"))
    tree = workdir / "base"
    benches = [Bench(key, SCRIPTS[key]) for key in only]
    try:
        git("worktree", "add", "--detach", str(tree), commit)
        sides = [
            Side("base", tree, f"{args.base} ({shorten(git('log', '-1', '--format=%h %s', commit))})"),
            Side("current", ROOT, f"the working tree of {ROOT} (HEAD {head}, {dirty} changed paths in src/ and "
                                  f"benchmarks/)"),
        ]
        if args.snapshot:
            sides[1] = snapshot(sides[1], workdir / "current")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"base:    {sides[0].description}\ncurrent: {sides[1].description}")
        print(f"python {python}; {os.cpu_count()} CPUs (load {load:.1f}); {args.rounds} round(s); "
              f"benchmarks: {', '.join(only)}")
        for side in sides:
            side.fingerprint = side.code_fingerprint()
            check_import(python, side)
        for bench in benches:
            plan(bench, sides, python, args)
            for side in sides:
                if side.name in bench.args:
                    options = " ".join(bench.args[side.name]) or "(the script's defaults)"
                    print(f"  {bench.key:6} {side.name:8} {bench.script} {options}")
        for round_number in range(args.rounds):
            order = sides if round_number % 2 == 0 else sides[::-1]
            for bench in benches:
                for side in order:
                    if side.name not in bench.errors:
                        run_once(bench, side, python, args.url, workdir, round_number + 1, args.rounds,
                                 args.verbose)
        summary = report(benches, args.rounds, sides)
        summary.update({
            "base": {"ref": args.base, "commit": commit, "cqrs": sides[0].cqrs_file, "code": sides[0].fingerprint},
            "current": {"root": str(ROOT), "head": head, "changed_paths": dirty, "cqrs": sides[1].cqrs_file,
                        "code": sides[1].fingerprint},
            "rounds": args.rounds, "load_at_start": load, "cpus": os.cpu_count(),
        })
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       capture_output=True, check=False)
        if any(bench.key == "saga" for bench in benches):
            with contextlib.suppress(subprocess.CalledProcessError, SystemExit):
                recreate_database(python, args.url, create=False)
        if args.keep_logs:
            print(f"logs and JSON of every run: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if summary["failed"] or summary["regressions"] or summary["changed"] else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=DEFAULT_BASE,
                        help=f"git ref to compare the working tree against (default {DEFAULT_BASE})")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; each runs every benchmark once per side (default 3; the noise needs >= 2)")
    parser.add_argument("--only", action="append", choices=BENCHES,
                        help="benchmark to run, repeatable (default: memory and saga; saga is PostgreSQL)")
    parser.add_argument("--seconds", type=float, help="bench_saga --seconds (default: the script's)")
    parser.add_argument("--concurrency", help="bench_saga --concurrency, e.g. 1,16 (default: the script's)")
    parser.add_argument("--sagas", type=int, help="--sagas for every benchmark (default: each script's)")
    parser.add_argument("--bench-rounds", type=int,
                        help="--rounds inside each benchmark run (default: each script's, 3)")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="PostgreSQL database for bench_saga, DROPPED and re-created before every run "
                        f"(default {DEFAULT_URL})")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python")
                        if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable,
                        help="interpreter for both sides (default: this checkout's .venv)")
    parser.add_argument("--json", metavar="FILE", help="also write the comparison to FILE as JSON")
    parser.add_argument("--snapshot", action="store_true",
                        help="measure a copy of the working tree's src/ and benchmarks/ taken at the start, not the "
                        "live tree (for when others are editing it)")
    parser.add_argument("--keep-logs", action="store_true", help="keep every run's output and JSON (path printed)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every benchmark run's output")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


if __name__ == "__main__":
    sys.exit(main())
