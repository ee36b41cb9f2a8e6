"""Shared fixtures: a real SQLite file, a real redis-server and a real PostgreSQL per backend
test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from stepstream import Realtime
from stepstream.events import SCHEMA

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A redis-server of our own on a free port (or ``$STEPSTREAM_TEST_REDIS_URL``)."""
    url = os.environ.get("STEPSTREAM_TEST_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is missing in CI: `make test` installs Debian's package")
        pytest.skip(
            "redis-server not installed (apt-get install redis-server); Redis tests skipped"
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL of our own (initdb + pg_ctl into a temp dir, ``tests/postgres.py``), or
    ``$STEPSTREAM_TEST_POSTGRES_URL``."""
    url = os.environ.get("STEPSTREAM_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    from tests.postgres import PostgresMissing, postgres_server

    try:
        server = postgres_server(free_port())
        started = server.__enter__()
    except PostgresMissing as exc:
        if IN_CI:
            pytest.fail(
                f"PostgreSQL is missing in CI: `make test` installs Debian's package ({exc})"
            )
        pytest.skip(str(exc))
    try:
        yield started.url
    finally:
        server.__exit__(None, None, None)


STORES = ["memory", "sqlite", "redis", "postgres"]
"""Every backend. ``backend_url`` gives the persistent ones; a suite adds the in-memory one with
``pytest.mark.parametrize("backend_url", STORES, indirect=True)`` (or by overriding it)."""


def store_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of ``kind``: a new SQLite file, a new key prefix on the test Redis,
    or a new named in-memory store (shared by the backends of this process opened with it)."""
    if kind == "memory":
        return f"memory://test-{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'stepstream.db'}"
    if kind == "postgres":
        base = request.getfixturevalue("postgres_url")
        return f"{base}?schema=test_{uuid.uuid4().hex[:12]}"
    base: str = request.getfixturevalue("redis_server")
    return f"{base}?prefix=test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store: a new SQLite file, a new key prefix on the test Redis, or a new
    schema on the test PostgreSQL."""
    return store_url(request.param, request, tmp_path)


@pytest.fixture
async def make_realtime(backend_url: str) -> AsyncIterator[Callable[..., Realtime]]:
    """Build ``Realtime``s on the test store (several may share it, like processes would)."""
    made: list[Realtime] = []

    def make(**kwargs: object) -> Realtime:
        kwargs.setdefault("schema", SCHEMA)
        realtime = Realtime(backend=backend_url, **kwargs)  # type: ignore[arg-type]
        made.append(realtime)
        return realtime

    yield make
    for realtime in made:
        await realtime.aclose()
