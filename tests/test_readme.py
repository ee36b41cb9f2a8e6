"""Every Python snippet in README.md runs as written.

A snippet identical to a file under ``examples/`` is run by that file's own test (the test
below checks the copy is exact). Every other snippet runs here, in order, in one namespace per
README (like a doctest session: the client snippet uses the ``workflows`` of the app snippet),
with top-level ``await`` allowed, in a temporary directory with its own SQLite store.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks() -> list[str]:
    return BLOCK.findall(README.read_text())


def example_files() -> dict[str, Path]:
    return {path.read_text(): path for path in sorted((ROOT / "examples").rglob("*.py"))}


def test_the_readme_has_snippets_and_each_parses() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 3
    for block in blocks:
        compile(
            block, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST
        )


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STEPSTREAM_BACKEND", f"sqlite:///{tmp_path / 'readme.db'}")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    yield tmp_path


def run_snippets(blocks: list[str], namespace: dict[str, Any]) -> None:
    async def session() -> None:
        for block in blocks:
            code = compile(block, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            outcome = eval(code, namespace)  # a coroutine when the block awaits
            if asyncio.iscoroutine(outcome):
                await outcome
        for value in list(namespace.values()):  # what the snippets left open
            close = getattr(value, "aclose", None)
            if type(value).__name__ in {"Workflows", "Client"} and close is not None:
                await close()

    asyncio.run(session())


def test_every_readme_snippet_runs(scratch: Path) -> None:
    examples = example_files()
    own = [block for block in python_blocks() if block not in examples]
    namespace: dict[str, Any] = {"__name__": "readme"}
    run_snippets(own, namespace)
    # The snippets did what they say: the client snippet triggered a run and read its log.
    assert namespace["log"]["workflowName"] == "order"
    assert [message.data["percent"] for message in namespace["latest"]] == [40, 100]
    assert os.path.exists(scratch / "readme.db")
