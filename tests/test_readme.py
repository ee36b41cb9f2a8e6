"""Every Python snippet in README.md runs as written.

A snippet identical to a file under ``examples/`` is run by that file's own test (the test
below checks the copy is exact). Every other snippet runs here, in order, in one namespace per
README (like a doctest session: the client snippet uses the ``workflows`` of the app snippet),
with top-level ``await`` allowed, in a temporary directory with its own SQLite store.
"""

from __future__ import annotations

import ast
import asyncio
import http.server
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.readme import python_blocks

ROOT = Path(__file__).resolve().parents[1]


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


class Hook(http.server.BaseHTTPRequestHandler):
    """The order example's notification endpoint, here on 127.0.0.1."""

    bodies: ClassVar[list[Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        Hook.bodies.append(json.loads(self.rfile.read(length)))
        payload = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    monkeypatch.setenv("ORDER_HOOK_URL", url)
    Hook.bodies.clear()
    yield url
    server.shutdown()
    server.server_close()


def test_the_first_workflow_example_runs_to_the_end(
    scratch: Path, hook: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from stepstream.testing import WorkflowEnv

    app: dict[str, Any] = {"__name__": "app"}
    exec(compile(python_blocks()[0], "README.md", "exec"), app)

    async def scenario() -> tuple[Any, Any]:
        async with WorkflowEnv(app["workflows"]) as env:
            approved = await env.client.trigger("order", {"sku": "A1"})
            await env.advance(31)  # past the cool-off: it waits for the approval now
            await env.client.notify(f"approve-{approved}", {"by": "ann"})
            failing = await env.client.trigger("order", {"sku": ""})
            unanswered = await env.client.trigger("order", {"sku": "B2"})
            await env.advance(31 + 24 * 3600)  # its approval never comes
            assert (await env.wait(unanswered))["workflowRunResponse"] == {"approved": False}
            return await env.wait(approved), await env.wait(failing)

    approved, failing = asyncio.run(scenario())
    assert approved["workflowState"] == "RUN_SUCCESS", approved
    assert approved["workflowRunResponse"] == {
        "approved": True,
        "receipt": "receipt-A1",
        "label": "label-A1",
        "status": 200,
    }
    assert Hook.bodies == [{"item": {"sku": "A1", "reserved": True}}]
    assert failing["workflowState"] == "RUN_FAILED"
    assert [step["stepName"] for step in failing["steps"]] == ["reserve", "alert"]
    assert "an order needs a sku" in capsys.readouterr().out
