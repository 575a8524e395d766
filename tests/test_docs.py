"""Every ```python block in README.md and docs/ runs (blocks of one page share a namespace); every other code
block is of a kind that is not run, and says so by its language; blocks that use top-level ``await`` say how to
run them; and the site builds with ``mkdocs build --strict``."""

from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


FENCE = re.compile(r"^```(\S*)", re.M)
#: Fence languages and why such a block is not run by this test.
NOT_RUN = {
    "py": "quoted from a file that its own tests run (tests/test_django_docs.py checks the quote)",
    "py-skip": "Python that needs something the docs cannot have (your project, a database)",
    "bash": "shell commands",
    "text": "output or SQL",
    "json": "data",
    "ini": "configuration",
    "mermaid": "a diagram, drawn by the site",
}


def python_blocks(page: pathlib.Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def fences(page: pathlib.Path) -> list[str]:
    """The language of every opening fence (closing fences have none)."""
    found, opening = [], True
    for language in FENCE.findall(page.read_text()):
        if opening:
            found.append(language)
        opening = not opening
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_code_block_is_run_or_marked_as_not_run(page: pathlib.Path) -> None:
    for language in fences(page):
        assert language == "python" or language in NOT_RUN, f"{page.name}: a ```{language or '(no language)'} block"


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_blocks_with_top_level_await_say_how_to_run_them(page: pathlib.Path) -> None:
    for number, source in enumerate(python_blocks(page), 1):
        try:
            compile(source, page.name, "exec")
        except SyntaxError:
            assert "asyncio.run(" in source.splitlines()[0], f"{page.name}[block {number}] uses top-level await"


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: pathlib.Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr
    operations = (tmp_path / "site" / "operations" / "index.html").read_text()
    assert '<pre class="mermaid"><code>stateDiagram-v2' in operations  # rendered by Mermaid, not shown as code
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "SagaOperations" in reference and "Operator actions on stored sagas" in reference


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
async def test_page_code_runs(page: pathlib.Path) -> None:
    module = types.ModuleType(f"docs_{page.stem}")
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    for number, source in enumerate(python_blocks(page), 1):
        code = compile(
            source, f"{page.name}[block {number}]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
        result = eval(code, namespace)
        if isinstance(result, types.CoroutineType):
            await result
    del sys.modules[module.__name__]
