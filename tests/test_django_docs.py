"""docs/django.md shows code from the example and the test project: it must still be there.

Its ```py blocks cannot run on their own (they need a configured Django
project, which tests/test_docs.py does not set up), so each one names its
file in its first line and every line shown must be in that file, in order.
The projects' own tests run the code.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "django.md"
BLOCK = re.compile(r"^```py\n(.*?)^```", re.S | re.M)


def blocks() -> list[str]:
    return BLOCK.findall(PAGE.read_text())


def test_the_page_has_quoted_blocks_and_no_unchecked_python() -> None:
    assert len(blocks()) >= 4
    assert "```python" not in PAGE.read_text()


@pytest.mark.parametrize("block", blocks(), ids=lambda block: block.splitlines()[0].lstrip("# "))
def test_quoted_code_is_in_the_named_file(block: str) -> None:
    header, *lines = block.splitlines()
    assert header.startswith("# "), f"a quoted block starts with '# path/of/the/file.py': {header!r}"
    source = (ROOT / header[2:].strip()).read_text().splitlines()
    position = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            position = source.index(line, position) + 1
        except ValueError:
            pytest.fail(f"{header[2:]} has no line {line!r} (after line {position})")
