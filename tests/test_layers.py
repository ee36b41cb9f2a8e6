"""The structure docs/architecture.md describes, kept honest: one-way layers, no import cycle
(counting ``TYPE_CHECKING`` and in-function imports), and modules and functions of a size a
reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "stepstream"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

# Bottom to top. A module may import modules of its own layer or lower ones.
LAYERS: list[tuple[str, ...]] = [
    ("stepstream.errors", "stepstream.clock", "stepstream.version", "stepstream.futures"),
    ("stepstream.records",),
    ("stepstream.backends", "stepstream.events"),
    ("stepstream.auth", "stepstream.responses"),
    ("stepstream.realtime",),
    ("stepstream.workflow",),
    ("stepstream.upstash",),
    ("stepstream.server",),
    (
        "stepstream",
        "stepstream.workflows",
        "stepstream.client",
        "stepstream.testing",
        "stepstream.cli",
        "stepstream.console",
        "stepstream.examples",
    ),
]
BACKENDS_MAY_IMPORT = (
    "stepstream.records",
    "stepstream.errors",
    "stepstream.clock",
    "stepstream.futures",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every stepstream module ``name`` imports, wherever the import statement is."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return {target for target in found if target in MODULES and target != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> int:
    best, rank = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank >= 0, f"{name} belongs to no layer: add it to LAYERS and docs/architecture.md"
    return rank


def cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    return found


def test_the_checker_sees_imports_of_every_kind() -> None:
    # A checker that found nothing would pass every rule below.
    assert "stepstream.records" in GRAPH["stepstream.backends.base"]
    assert "stepstream.workflow.engine" in GRAPH["stepstream.workflow.worker"]
    assert len(MODULES) > 30


def test_no_import_cycle() -> None:
    assert cycles() == []


def test_layers_import_only_downwards() -> None:
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in GRAPH.items()
        for target in sorted(targets)
        if layer(target) > layer(name)
    ]
    assert upward == []


def test_backends_import_only_records_errors_and_the_clock() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name.startswith("stepstream.backends")
        for target in sorted(targets)
        if not target.startswith(("stepstream.backends", *BACKENDS_MAY_IMPORT))
    ]
    assert wrong == []


SOURCES = sorted(
    path
    for pattern in ("*.py", "*.js", "*.lua", "*.html", "*.css")
    for path in PACKAGE.rglob(pattern)
    if "vendor" not in path.parts
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_over_the_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines: it is probably two things"


def test_no_function_over_the_limit_without_a_reason() -> None:
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            reason = "long because" in (ast.get_docstring(node) or "").lower()
            if length > MAX_FUNCTION_LINES and not reason:
                long.append(f"{name}.{node.name}: {length} lines")
    assert long == [], "say why in the docstring ('long because ...') or split it"
