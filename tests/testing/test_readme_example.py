"""The README's "Testing your workflows" example is ``examples/testing_example.py``, byte for
byte, and its tests run here."""

from __future__ import annotations

from pathlib import Path

import pytest
from examples.testing_example import (
    test_an_approval_during_the_wait,
    test_an_unanswered_order_is_charged_after_a_day_and_an_hour,
)

pytestmark = pytest.mark.anyio  # the example's own mark stays in its module

ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "test_an_approval_during_the_wait",
    "test_an_unanswered_order_is_charged_after_a_day_and_an_hour",
]


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in README.md."""
    text = (ROOT / "README.md").read_text()
    after = text.split(f"\n{heading}\n", 1)[1]
    return after.split("```python\n", 1)[1].split("```\n", 1)[0]


def test_the_readme_example_is_the_file_the_suite_runs() -> None:
    example = (ROOT / "examples" / "testing_example.py").read_text()
    assert readme_block("## Testing your workflows") == example
