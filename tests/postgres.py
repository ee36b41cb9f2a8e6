"""A PostgreSQL server of the tests' own (groundwork for the Postgres backend, issue 10).

Debian's binaries (``/usr/lib/postgresql/<version>/bin``): ``initdb`` into a temporary
directory, ``pg_ctl start`` on a free port, listening on 127.0.0.1 only with trust auth and its
socket in that directory, never the machine's shared server. ``initdb`` refuses to run as root,
so as root the server runs as the ``postgres`` system user (``runuser``), which must be able to
write the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BIN_ROOT = Path("/usr/lib/postgresql")


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def server_binaries() -> Path:
    """The ``bin`` directory of the newest PostgreSQL installed from Debian's packages."""
    versions = sorted(
        (path for path in BIN_ROOT.glob("*/bin") if (path / "initdb").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not versions:
        raise PostgresMissing(
            f"no PostgreSQL server under {BIN_ROOT} (apt-get install postgresql); "
            "Postgres tests skipped"
        )
    return versions[-1]


@dataclass(frozen=True)
class PostgresServer:
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def _as_server_user(command: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(command)
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def postgres_server(port: int, *, durable: bool = False) -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL on ``port``; stop it and delete its files afterwards.

    By default it runs with ``fsync=off`` (tests lose nothing they need on a crash);
    ``durable=True`` keeps PostgreSQL's own defaults (``fsync=on``, ``synchronous_commit=on``),
    so a commit waits for its WAL flush as on a real server: what benchmarks measure."""
    binaries = server_binaries()
    directory = Path(tempfile.mkdtemp(prefix="stepstream-pg-"))
    data = directory / "data"
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    try:
        subprocess.run(
            _as_server_user(
                [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
            ),
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {directory}"
        if not durable:
            options += " -c fsync=off"
        subprocess.run(
            _as_server_user(
                [
                    str(binaries / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    options,
                    "-l",
                    str(directory / "server.log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        try:
            yield PostgresServer(port, directory)
        finally:
            subprocess.run(
                _as_server_user(
                    [str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
                ),
                capture_output=True,
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
