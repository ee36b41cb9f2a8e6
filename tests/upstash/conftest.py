"""The pinned ``@upstash/workflow`` SDK next to ``node/serve.mjs``, shared by the probe and the
gateway tests, and the signing key of the gateway tests' stepstream servers."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import tempfile

import pytest

from tests.upstash.harness import NODE_DIR, SDK_VERSION, install_is_current, missing
from tests.upstash.test_gateway import CURRENT_KEY


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` binary, with the pinned SDK installed next to ``serve.mjs``."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing("node/npm not installed (apt-get install npm); the Upstash SDK tests are skipped")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    if int(version.stdout.strip().lstrip("v").split(".")[0]) < 20:
        missing(f"node {version.stdout.strip()} is too old: the Upstash SDK tests need 20+")
    # One install at a time, even across pytest-xdist workers and concurrent sessions.
    lock_path = f"{tempfile.gettempdir()}/stepstream-upstash-npm.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not install_is_current():
            # --ignore-scripts: nothing in the tree may run code or fetch a binary at install.
            subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                check=True,
                capture_output=True,
            )
    installed = NODE_DIR / "node_modules" / "@upstash" / "workflow" / "package.json"
    assert json.loads(installed.read_text())["version"] == SDK_VERSION
    return node


@pytest.fixture
def signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """stepstream signs deliveries with the key the SDK apps verify them against (``sdk_env``
    gives the apps both keys). Requested by each file (``pytest.mark.usefixtures``), not
    autouse: a test of unsigned deliveries stays possible."""
    monkeypatch.setenv("QSTASH_CURRENT_SIGNING_KEY", CURRENT_KEY)
