"""Starting ``stepstream dev`` / ``server`` / ``worker`` on a backend or a port that does not
work: one line saying what and how to fix it, exit status 1 (2 for a usage error), nothing
served and no banner for a server that never started; not a traceback from the ASGI lifespan."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.cli.test_cli import STEPSTREAM, environment, stepstream, words
from tests.conftest import free_port
from tests.processes import serving

EXAMPLES = "stepstream.examples:workflows"


@pytest.mark.parametrize(
    ("command", "scheme"),
    [(["dev"], "postgresql"), (["server", EXAMPLES], "redis"), (["worker", EXAMPLES], "redis")],
)
def test_a_backend_that_does_not_answer_is_one_line(command: list[str], scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}/{'x' if scheme == 'postgresql' else '0'}"
    port = [] if command[0] == "worker" else ["--port", str(free_port())]
    done = stepstream(*command, "--backend", url, *port)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert words(done.stderr).startswith("error: ")
    assert "127.0.0.1" in done.stderr and "refused" in done.stderr.lower()
    assert done.stdout == ""  # no banner for a server that never started


def test_a_malformed_postgresql_url_is_one_line() -> None:
    done = stepstream("worker", EXAMPLES, "--backend", "postgresql://u@localhost:notaport/db")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "error: bad URL for PostgreSQL at postgresql://u@localhost:notaport/db" in words(
        done.stderr
    )


def test_an_unknown_backend_url_names_the_ones_there_are() -> None:
    done = stepstream("server", EXAMPLES, "--backend", "mysql://db/x", "--port", str(free_port()))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "unknown backend URL 'mysql://db/x'" in words(done.stderr)
    assert "postgresql://" in done.stderr


def test_a_port_in_use_is_refused_before_the_banner(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = stepstream("dev", "--backend", f"sqlite:///{tmp_path / 'x.db'}", "--port", str(port))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in words(done.stderr)
    assert "--port N" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_an_address_that_is_not_this_machines_is_said_without_the_port_hint(
    tmp_path: Path,
) -> None:
    backend = f"sqlite:///{tmp_path / 'x.db'}"
    done = stepstream("dev", "--host", "192.0.2.10", "--insecure", "--backend", backend)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot serve on 192.0.2.10:8000" in words(done.stderr)
    assert "--port N" not in done.stderr  # the port is not what is wrong


def test_a_port_out_of_range_is_a_usage_error() -> None:
    done = stepstream("dev", "--port", "99999")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "99999 is not in the range 0<=x<=65535" in words(done.stderr)


@pytest.mark.parametrize(
    ("command", "banner"),
    [(["dev"], "stepstream dev: workflows "), (["server", EXAMPLES], "stepstream server: ")],
)
def test_port_0_serves_on_a_free_port_the_banner_names(
    tmp_path: Path, command: list[str], banner: str
) -> None:
    """The banner comes once the app is ready (store open, workers started), names the port
    it got, and SIGTERM still ends the process as a stop signal does."""
    argv = [*STEPSTREAM, *command, "--port", "0", "--backend", f"sqlite:///{tmp_path / 'x.db'}"]
    process = subprocess.Popen(
        argv, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line.startswith(banner), line
        port = int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM, err.decode()
    assert b"Traceback" not in err


def test_a_command_without_the_servers_token_says_how_to_give_it(tmp_path: Path) -> None:
    port = free_port()
    command = [*STEPSTREAM, "dev", "--port", str(port), "--backend", f"sqlite:///{tmp_path}/x.db"]
    env = {**environment(), "STEPSTREAM_TOKEN": "a-long-secret"}
    with serving(command, port=port, cwd=tmp_path, env=env, log_path=tmp_path / "log") as url:
        refused = stepstream("runs", url=url)
        allowed = stepstream("runs", "--token", "a-long-secret", url=url)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "--token <token> or STEPSTREAM_TOKEN=<token>" in words(refused.stderr)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_an_ipv6_host_is_served_and_named_in_brackets(tmp_path: Path) -> None:
    argv = [*STEPSTREAM, "dev", "--host", "::1", "--port", "0"]
    argv += ["--backend", f"sqlite:///{tmp_path / 'x.db'}"]
    process = subprocess.Popen(argv, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert "open http://[::1]:" in line, line
        port = int(line.split("http://[::1]:", 1)[1].split("/", 1)[0])
        assert httpx.get(f"http://[::1]:{port}/healthz", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def _read_until(sock: socket.socket, marker: bytes, got: bytes = b"") -> bytes:
    while marker not in got:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_a_stream_opened_while_the_server_stops_is_told_to_reconnect_at_once(
    tmp_path: Path,
) -> None:
    """A browser told ``reconnect`` by a stopping server comes straight back, on the same
    kept-alive connection: that stream too must end at once, or the server waits for it until
    its shutdown timeout (10 s) and logs the cancelled response."""
    argv = [*STEPSTREAM, "dev", "--port", "0", "--backend", f"sqlite:///{tmp_path / 'x.db'}"]
    process = subprocess.Popen(
        argv, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    request = b"GET /api/realtime?channels=stepstream:runs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        port = int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        with socket.create_connection(("127.0.0.1", port), timeout=8) as sock:
            sock.sendall(request)
            _read_until(sock, b'"connected"')
            process.send_signal(signal.SIGTERM)
            first = _read_until(sock, b"\r\n0\r\n\r\n")  # the chunked response's end
            assert b'"reconnect"' in first
            sock.sendall(request)  # straight back, as EventSource does
            second = _read_until(sock, b"\r\n0\r\n\r\n")
        # Answered at once (before, it waited past the socket's timeout), or closed unanswered.
        assert not second or b'"reconnect"' in second, second[-300:]
        _, err = process.communicate(timeout=8)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert b"Traceback" not in err and b"graceful shutdown exceeded" not in err, err.decode()


def test_a_worker_names_the_backend_it_works_on(tmp_path: Path) -> None:
    """Started without ``--backend`` or ``STEPSTREAM_BACKEND``, a worker quietly works on a
    local SQLite file: its first line says which store, as ``dev`` and ``server`` do."""
    env = {k: v for k, v in environment().items() if k != "STEPSTREAM_BACKEND"}
    argv = [*STEPSTREAM, "worker", EXAMPLES]
    process = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        line = process.stderr.readline().decode()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert line.startswith("stepstream worker "), line
    assert "(backend: sqlite:///.stepstream/stepstream.db; Ctrl-C stops)" in line, line
