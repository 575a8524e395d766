"""``pip install cqrs-saga`` with no extras runs the first example of docs/index.md (issue 12, point 9).

The wheel is built from a copy of the project (so no build output lands in the
work tree), installed into a new, empty virtual environment with its declared
dependencies only, and the page's first Python block is run there, as the
docs tests run it (top-level ``await`` allowed).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import venv

import pytest

from test_docs import python_blocks

ROOT = pathlib.Path(__file__).parent.parent

RUNNER = """
import ast, asyncio, pathlib, sys, types

source = pathlib.Path(sys.argv[1]).read_text()
code = compile(source, "docs/index.md[block 1]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
module = types.ModuleType("docs_index")
sys.modules[module.__name__] = module
result = eval(code, module.__dict__)
if isinstance(result, types.CoroutineType):
    asyncio.run(result)
"""


def clean_env() -> dict[str, str]:
    """This process's environment without what would point the new venv back at ours."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def run(command: list[str], cwd: pathlib.Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_a_plain_install_runs_the_first_example_of_the_docs(tmp_path: pathlib.Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", project)
    shutil.copy2(ROOT / "README.md", project)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(project)], tmp_path)
    (wheel,) = dist.glob("cqrs_saga-*.whl")

    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(environment)
    python = environment / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)], tmp_path)

    where = run(
        [str(python), "-c", "import cqrs, importlib.util; print(cqrs.__file__); "
         "print(importlib.util.find_spec('sqlalchemy') is None, importlib.util.find_spec('anyio') is not None)"],
        tmp_path,
    ).stdout.split()
    assert where[0].startswith(str(environment))  # the installed wheel, not the work tree
    assert where[1:] == ["True", "True"]  # no extras came along; what di needs did

    example = tmp_path / "example.py"
    example.write_text(python_blocks(ROOT / "docs" / "index.md")[0])
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    done = run([str(python), str(runner), str(example)], tmp_path, timeout=120)
    assert done.stdout.strip() == "Greet hello, Ada"
