"""The README's Python snippets, for the tests that run them or compare them with files."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks(*, after: str | None = None) -> list[str]:
    """Every ```python block of README.md, in order; with ``after`` (a heading line), only
    those that follow it."""
    text = README.read_text()
    if after is not None:
        text = text.split(f"\n{after}\n", 1)[1]
    return BLOCK.findall(text)
