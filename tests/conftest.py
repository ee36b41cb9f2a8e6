"""Shared fixtures: a real SQLite file, a real redis-server and a real PostgreSQL per backend
test."""

from __future__ import annotations

import itertools
import os
import random
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


TESTS = Path(__file__).parent
SERIAL = {"browser", "chaos"}
"""Directories whose tests run one after another on a single xdist worker (``make test`` runs
``--dist loadgroup``): the browser tests share built pages, ``node_modules`` and screenshot
files, and one Chromium per module; each chaos scenario loads the machine with processes of its
own, which must not pile up."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for directory in SERIAL:
            if item.path.is_relative_to(TESTS / directory):
                item.add_marker(pytest.mark.xdist_group(directory))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport() -> Iterator[pytest.TestReport]:
    """Escape lone surrogates in a report (``\\udcff``): an xdist worker sends the report to
    the controller as UTF-8, and one that can't be encoded (a file name decoded with
    ``surrogateescape``, in what a test logged) crashes the worker and ends the whole run."""
    report: pytest.TestReport = yield
    report.sections = [(title, _utf8(text)) for title, text in report.sections]
    if report.longrepr is not None and _utf8(str(report.longrepr)) != str(report.longrepr):
        report.longrepr = _utf8(str(report.longrepr))
    return report


def _utf8(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


PORT_BLOCK = 500


def _port_block() -> range:
    """This process's ports: block ``n`` for xdist worker ``gwn`` (block 0 without xdist), the
    blocks counting down from the kernel's ephemeral range, so no two workers share a port."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except OSError:
        ephemeral = 32768
    top = ephemeral - worker * PORT_BLOCK
    if top - PORT_BLOCK < 10_000:
        raise RuntimeError(f"no ports left for xdist worker {worker}: run fewer workers")
    return range(top - PORT_BLOCK, top)


_PORTS = _port_block()
_port_offsets = itertools.count(random.randrange(PORT_BLOCK))


def free_port() -> int:
    """A port nothing listens on, for a server a test starts.

    A bind to port 0 hands out a port of the kernel's ephemeral range, which another xdist
    worker's bind to port 0, or any outgoing connection, may take before our server listens on
    it. So each worker walks a block of its own below that range, from a random offset (two runs
    of the suite on one machine don't walk in step), skipping ports in use."""
    for _ in range(PORT_BLOCK):
        port = _PORTS[next(_port_offsets) % PORT_BLOCK]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"every port of {_PORTS} is in use")


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
