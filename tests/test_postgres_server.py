"""The tests' own PostgreSQL (``tests/postgres.py``) starts, answers, and goes away: the
groundwork the Postgres backend's tests will stand on (issue 10)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import IN_CI, free_port
from tests.postgres import PostgresMissing, postgres_server, server_binaries


def test_a_private_postgres_starts_answers_and_is_removed() -> None:
    try:
        server_binaries()
    except PostgresMissing as exc:
        if IN_CI:
            pytest.fail(f"{exc}: `make test` installs Debian's postgresql")
        pytest.skip(str(exc))
    psql = shutil.which("psql")
    assert psql is not None, "psql comes with Debian's postgresql"
    port = free_port()
    with postgres_server(port) as server:
        answer = subprocess.run(
            [psql, server.url, "-tAc", "select current_setting('port'), version()"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert answer.startswith(f"{port}|PostgreSQL "), answer
        directory = server.directory
    assert not directory.exists()
    refused = subprocess.run(
        [psql, f"postgresql://postgres@127.0.0.1:{port}/postgres", "-tAc", "select 1"],
        capture_output=True,
    )
    assert refused.returncode != 0  # stopped: nothing listens on the port any more
