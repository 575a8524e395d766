"""Another commit's ``cqrs`` in the same run (bench_recovery.py and bench_failure.py ``--base``).

`checkout` puts a commit's ``src`` in a temporary git worktree; `run_importing`
runs a benchmark's side in a subprocess that imports ``cqrs`` from a given
``src`` (``PYTHONPATH`` comes before the venv's editable install) and checks
that it did.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

__all__ = ["ROOT", "checkout", "run_importing"]

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def checkout(commit: str, prefix: str) -> typing.Iterator[Path]:
    """``commit``'s ``src``, in a worktree under a temporary directory named ``prefix...``; the worktree is
    removed at the end, also when the benchmark is stopped with SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        tree = Path(tmp) / "base"
        added = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
                               check=False, capture_output=True, text=True)
        if added.returncode != 0:
            raise SystemExit(f"cannot check out the base {commit!r}: {added.stderr.strip()}")
        try:
            yield tree / "src"
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)


def run_importing(src: Path, command: list[str], what: str) -> dict[str, typing.Any]:
    """Run ``command`` (a script that writes its figures as JSON to the file after ``--json``, with ``"cqrs"``:
    the file it imported ``cqrs`` from) with ``cqrs`` from ``src``; its figures, ``"cqrs"`` taken out once
    checked. ``what`` names the run in errors."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run([*command, "--json", out.name], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{what}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        figures: dict[str, typing.Any] = json.loads(Path(out.name).read_text())
    imported = figures.pop("cqrs")
    if not Path(imported).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"{what} imported {imported}, not cqrs from {src}")
    return figures
