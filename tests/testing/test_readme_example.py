"""The README's "Testing your workflows" example is ``examples/testing_example.py``, byte for
byte, and its tests run here."""

from __future__ import annotations

from pathlib import Path

import pytest
from examples.testing_example import (
    test_an_approval_during_the_wait,
    test_an_unanswered_order_is_charged_after_a_day_and_an_hour,
)

from tests.readme import python_blocks

pytestmark = pytest.mark.anyio  # the example's own mark stays in its module

ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "test_an_approval_during_the_wait",
    "test_an_unanswered_order_is_charged_after_a_day_and_an_hour",
]


def test_the_readme_example_is_the_file_the_suite_runs() -> None:
    example = (ROOT / "examples" / "testing_example.py").read_text()
    assert python_blocks(after="## Testing your workflows")[0] == example
