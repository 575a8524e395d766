"""Every ```python block in README.md and docs/ runs (blocks of one page share a namespace)."""

from __future__ import annotations

import ast
import pathlib
import re
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: pathlib.Path) -> list[str]:
    return BLOCK.findall(page.read_text())


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
