"""Run a stepstream server as a subprocess for a test: start, wait for /healthz, stop."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


@contextmanager
def serving(
    command: Sequence[str],
    *,
    port: int,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
) -> Iterator[str]:
    """Run ``command`` (a server listening on 127.0.0.1:``port``) and yield its base URL once
    ``/healthz`` answers 200; SIGTERM it afterwards (SSE streams drain), SIGKILL if it hangs.
    Its output goes to ``log_path``."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{command[0]} did not start:\n{log_path.read_text()}")
            time.sleep(0.05)  # waiting for the port, not an assertion
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
