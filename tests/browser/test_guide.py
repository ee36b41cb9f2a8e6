"""The guide's own hook and page (examples/guide/, verbatim, bundled against
@upstash/realtime@0.3.0) against ``uvicorn examples.guide_app:app``: every step shows
``completed`` and the run ``success``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser_harness import _free_port

from tests.processes import serving

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "examples" / "guide"


@pytest.fixture(scope="module")
def guide_bundle() -> Path:
    if shutil.which("npm") is None:
        if os.environ.get("CI"):
            pytest.fail("npm is missing in CI: `make test` installs it")
        pytest.skip("npm is not installed")
    subprocess.run([str(GUIDE / "build.sh")], check=True, timeout=300)
    return GUIDE / "dist"


@pytest.fixture
def guide_server(tmp_path: Path, guide_bundle: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "STEPSTREAM_BACKEND": f"sqlite:///{tmp_path / 'guide.db'}"}
    command = [
        sys.executable, "-m", "uvicorn", "examples.guide_app:app", "--host", "127.0.0.1",
        "--port", str(port), "--timeout-graceful-shutdown", "1",
    ]  # fmt: skip
    log_path = tmp_path / "guide.log"
    with serving(command, port=port, cwd=ROOT, env=env, log_path=log_path) as url:
        yield url


def test_guide_page_shows_every_step_completed_and_success(page: Any, guide_server: str) -> None:
    page.goto(guide_server + "/")
    page.get_by_role("button", name="Click to Trigger Workflow").click()
    page.wait_for_function(
        "document.body.innerText.includes('send-notification: completed')", timeout=20_000
    )
    page.wait_for_function("document.body.innerText.includes('success')", timeout=20_000)
    text = page.inner_text("body")
    for step in ("validate-data", "process-data", "send-notification"):
        assert f"{step}: completed" in text
    assert text.count(": completed") == 3  # each step once: no duplicate event was applied
    assert "failed" not in text
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    page.screenshot(path=str(artifacts / "guide-page.png"))


def test_guide_trigger_endpoint(guide_server: str) -> None:
    reply = httpx.post(f"{guide_server}/api/trigger", json={"workflowType": "basic"}, timeout=10)
    assert reply.status_code == 200
    assert reply.json()["workflowRunId"].startswith("wfr_")
    bad = httpx.post(f"{guide_server}/api/trigger", json={"workflowType": "nope"}, timeout=10)
    assert bad.status_code == 404
    json_type = {"content-type": "application/json"}
    malformed = httpx.post(f"{guide_server}/api/trigger", content=b"{", headers=json_type)
    assert malformed.status_code == 400
    # What any web page may send cross-site without a preflight is refused (issue 8, item 10).
    plain = httpx.post(f"{guide_server}/api/trigger", content=b'{"workflowType": "basic"}')
    assert plain.status_code == 415
