"""The real console script: the worktree installed (not editable) into a throwaway venv, ``cqrs-saga`` run from it.

The throwaway venv sees this environment's packages (a ``.pth`` line) for the dependencies, and pip builds
and installs this project into it without the network (``--no-deps --no-index --no-build-isolation``).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_the_installed_console_script_runs(tmp_path: pathlib.Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    pathlib.Path(site, "shared-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--disable-pip-version-check", str(ROOT)],
        check=True, env=env, cwd=tmp_path, capture_output=True, timeout=300,
    )
    script = venv / "bin" / "cqrs-saga"
    assert script.exists()
    url = f"sqlite:///{tmp_path / 'sagas.db'}"
    helped = subprocess.run([str(script), "--help"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert helped.returncode == 0 and "worker" in helped.stdout and "130" in helped.stdout
    created = subprocess.run([str(script), "db", "create", "--url", url], env=env, cwd=tmp_path,
                             capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    listed = subprocess.run([str(script), "list", "--json"], env={**env, "CQRS_SAGA_STORAGE_URL": url},
                            cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stderr
    where = subprocess.run([str(python), "-c", "import cqrs.console, cqrs; print(cqrs.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True)
    assert where.stdout.startswith(site), where.stdout  # the installed copy, not this worktree
    shipped = pathlib.Path(site, "cqrs", "console", "static")
    assert {"mermaid.min.js", "mermaid.LICENSE", "console.css"} <= {p.name for p in shipped.iterdir()}
    migrations = pathlib.Path(site, "cqrs", "saga", "storage", "sqlalchemy", "migrations")
    assert (migrations / "cqrs_saga_0001_schema_3.py").exists()
