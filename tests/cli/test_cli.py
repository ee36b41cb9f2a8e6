"""The ``stepstream`` command as a user runs it: ``stepstream dev`` (the built-in examples, on a
SQLite file) in a subprocess, and every client command a subprocess of its own that reaches it
through ``STEPSTREAM_URL``. Output is read as a pipe sees it (no terminal, 80 columns)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.processes import serving

STEPSTREAM = [sys.executable, "-m", "stepstream.cli"]
BASIC_STEPS = ["validate-data", "process-data", "cool-down", "send-notification"]
RUN_ID = re.compile(r"wfr_[A-Za-z0-9_-]{22,}")
TIMEOUT = 60  # seconds any one command may take; the runs themselves take ~3 s


def environment(url: str | None = None) -> dict[str, str]:
    """The test's environment without anything that would change how rich draws or where the
    CLI looks: no terminal width, no forced colour, no backend or token of the developer's."""
    dropped = {"COLUMNS", "LINES", "FORCE_COLOR", "STEPSTREAM_BACKEND", "STEPSTREAM_TOKEN"}
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env.update(NO_COLOR="1", PYTHONIOENCODING="utf-8")
    if url is not None:
        env["STEPSTREAM_URL"] = url
    return env


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``stepstream dev`` (no APP: the built-in examples) on a SQLite file and a free port."""
    tmp = tmp_path_factory.mktemp("dev")
    port = free_port()
    log_path = tmp / "dev.log"
    command = [
        *STEPSTREAM, "dev", "--port", str(port),
        "--backend", f"sqlite:///{tmp / 'x.db'}", "--log-level", "warning",
    ]  # fmt: skip
    with serving(command, port=port, cwd=tmp, env=environment(), log_path=log_path) as url:
        yield url
    log_text = log_path.read_text()
    print(f"stepstream dev log:\n{log_text}")
    assert "Traceback" not in log_text, "stepstream dev logged an exception"


@contextlib.contextmanager
def dev_of(tmp_path: Path, module: str, source: str) -> Iterator[str]:
    """``stepstream dev`` of the app ``source`` (saved as ``module.py`` in ``tmp_path``, its
    ``workflows``) on a SQLite file there and a free port; yields its URL."""
    (tmp_path / f"{module}.py").write_text(source)
    port = free_port()
    command = [
        *STEPSTREAM, "dev", f"{module}:workflows", "--port", str(port),
        "--backend", f"sqlite:///{tmp_path / 'x.db'}", "--log-level", "warning",
    ]  # fmt: skip
    env = environment() | {"PYTHONPATH": str(tmp_path)}
    with serving(command, port=port, cwd=tmp_path, env=env, log_path=tmp_path / "log") as url:
        yield url


def stepstream(
    *args: str, url: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEPSTREAM, *args],
        env=environment(url),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT,
        input=stdin,
    )


def words(text: str) -> str:
    """``text`` with every run of whitespace made one space: rich wraps long lines at 80."""
    return " ".join(text.split())


def wait_finished(url: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        log: dict[str, Any] = httpx.get(f"{url}/api/runs/{run_id}", timeout=5).json()
        if log["workflowState"] != "RUN_STARTED":
            return log
        assert time.monotonic() < deadline, f"{run_id} did not finish: {log}"
        time.sleep(0.1)  # polling for the end of the run, not an assertion


@pytest.fixture(scope="module")
def finished_run(dev: str) -> str:
    """A ``basic`` run started without ``--follow``, once it has finished."""
    done = stepstream("trigger", "basic", "--data", '{"userId": "u-cli"}', url=dev)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert RUN_ID.fullmatch(run_id), done.stdout
    assert wait_finished(dev, run_id)["workflowState"] == "RUN_SUCCESS"
    return run_id


# -- help ---------------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    done = stepstream("--help")
    assert done.returncode == 0, done.stderr
    for command in (
        "dev", "server", "worker", "trigger", "logs", "runs", "tail", "notify", "cancel",
        "resume", "restart", "fork", "delete", "waiters",
    ):  # fmt: skip
        assert re.search(rf"^\s+{command}\s", done.stdout, re.MULTILINE), (command, done.stdout)


def test_dev_help_names_the_examples_and_common_options() -> None:
    done = stepstream("dev", "--help")
    assert done.returncode == 0, done.stderr
    text = words(done.stdout)
    for option in ("--backend", "--host", "--port"):
        assert option in text
    for example in ("basic", "failing", "approval", "parallel"):
        assert example in text


def test_version() -> None:
    done = stepstream("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("stepstream, version ")


# -- trigger ------------------------------------------------------------------------------------


def test_trigger_follow_shows_each_step_and_exits_0_on_success(dev: str) -> None:
    done = stepstream("trigger", "basic", "--follow", url=dev)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert RUN_ID.search(lines[0]), lines
    marked = [line.split()[1] for line in lines if line.startswith("✓ ")]
    assert marked == BASIC_STEPS, done.stdout
    assert lines[-1].startswith("success"), done.stdout
    assert done.stdout.endswith("\n"), "the last line is not ended"
    run_id = RUN_ID.search(lines[0]).group()  # type: ignore[union-attr]
    assert wait_finished(dev, run_id)["workflowState"] == "RUN_SUCCESS"


def test_trigger_follow_shows_the_failed_step_and_exits_1(dev: str) -> None:
    done = stepstream("trigger", "failing", "--follow", url=dev)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    failed = [line for line in lines if line.startswith("✗ ")]
    assert [line.split()[1] for line in failed] == ["upload-report"], done.stdout
    assert "attempt 3" in failed[0], done.stdout  # retried twice: the attempt is numbered
    text = words(done.stdout)
    assert "✓ fetch-data" in text
    assert "upload-report" in text and "upstream storage answered 503" in text
    summary = words("\n".join(lines[lines.index(failed[0]) + 1 :]))
    assert "failed" in summary, done.stdout


def test_follow_into_a_pipe_prints_each_step_as_it_ends(dev: str) -> None:
    """Into a pipe, where no screen can be redrawn, a line per step as it ends and one saying
    what the run waits for, each flushed: all of them once came at the end, together."""
    follow = subprocess.Popen(
        [*STEPSTREAM, "trigger", "approval", "--follow"],
        env=environment(dev),
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    assert follow.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()  # None: the end of its output

    def read(stream: Any) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, args=(follow.stdout,), daemon=True).start()
    try:
        header = str(lines.get(timeout=TIMEOUT))
        run_id = RUN_ID.search(header).group()  # type: ignore[union-attr]
        assert str(lines.get(timeout=TIMEOUT)).startswith("✓ prepare-request")
        # The run cannot end before it is notified: these lines came while it waits.
        waits = str(lines.get(timeout=TIMEOUT))
        assert waits.startswith(f"waiting for event 'approve-{run_id}' (until "), waits
        reply = httpx.post(f"{dev}/api/events/approve-{run_id}", json={"ok": True}, timeout=10)
        assert reply.is_success, reply.text
        rest = [str(line) for line in iter(lambda: lines.get(timeout=TIMEOUT), None)]
        follow.wait(TIMEOUT)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0
    assert [line.split()[1] for line in rest if line.startswith("✓ ")] == [
        "wait-for-approval",
        "apply-decision",
    ], rest
    assert rest[-1].startswith("success"), rest


def test_trigger_unknown_workflow_exits_1(dev: str) -> None:
    done = stepstream("trigger", "nope", url=dev)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "unknown workflow" in words(done.stderr)
    assert "Traceback" not in done.stderr


def test_trigger_with_bad_json_is_a_usage_error(dev: str) -> None:
    done = stepstream("trigger", "basic", "--data", "{bad", url=dev)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--data" in done.stderr
    assert done.stdout == ""


def test_trigger_prints_the_run_id(dev: str) -> None:
    done = stepstream("trigger", "basic", url=dev)
    assert done.returncode == 0, done.stderr
    assert RUN_ID.fullmatch(done.stdout.strip()), done.stdout
    assert done.stdout.count("\n") == 1


def test_trigger_with_a_chosen_id_gets_the_prefix_and_a_reuse_fails(dev: str) -> None:
    done = stepstream("trigger", "basic", "--id", "cli-chosen-id", url=dev)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "wfr_cli-chosen-id"
    again = stepstream("trigger", "basic", "--id", "wfr_cli-chosen-id", url=dev)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "Traceback" not in again.stderr


def test_unreachable_server_is_a_clean_error(tmp_path: Path) -> None:
    done = stepstream("trigger", "basic", url=f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot reach" in words(done.stderr)
    assert "Is a stepstream server running there?" in words(done.stderr)
    assert "--url or STEPSTREAM_URL" in words(done.stderr)
    assert "Traceback" not in done.stderr


# -- notify and cancel (operator commands, DESIGN §9) ------------------------------------------


def wait_for(dev: str, run_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        log: dict[str, Any] = json.loads(stepstream("logs", run_id, "--json", url=dev).stdout)
        if log["workflowState"] == state:
            return log
        assert time.monotonic() < deadline, log
        time.sleep(0.1)  # waiting for the worker, not an assertion


def test_notify_sends_data_from_a_file_or_stdin_to_a_waiting_run(dev: str, tmp_path: Path) -> None:
    decision = tmp_path / "decision.json"
    decision.write_text('{"by": "ann"}')
    for source, stdin in ((f"@{decision}", None), ("-", '{"by": "ann"}')):
        asked = {"amount": len(source), "requestedBy": "bo"}
        started = stepstream("trigger", "approval", "--data", json.dumps(asked), url=dev)
        run_id = started.stdout.strip()
        # Named for this run: kept if it is not waiting yet (lookback), so no race.
        event = f"approve-{run_id}"
        sent = stepstream("notify", event, "--data", source, "--run", run_id, url=dev, stdin=stdin)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.strip() in {"0", "1"}  # kept for later, or one waiter woken
        log = wait_for(dev, run_id, "RUN_SUCCESS")
        assert log["workflowRunResponse"]["decision"] == {"by": "ann"}
        assert log["workflowRunResponse"]["request"] == asked  # the payload it was started with


def test_notify_without_waiters_and_bad_data_are_clean_errors(dev: str) -> None:
    nobody = stepstream("notify", "no-such-event", url=dev)
    assert nobody.returncode == 1 and "Traceback" not in nobody.stderr
    assert "no-such-event" in words(nobody.stderr)
    bad = stepstream("notify", "x", "--data", "@/no/such/file.json", url=dev)
    assert bad.returncode == 2 and "cannot read" in words(bad.stderr)


def test_cancel_ends_a_waiting_run_and_a_second_cancel_is_refused(dev: str) -> None:
    run_id = stepstream("trigger", "approval", url=dev).stdout.strip()
    done = stepstream("cancel", run_id, url=dev)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{run_id} RUN_CANCELED"
    assert wait_for(dev, run_id, "RUN_CANCELED")["workflowState"] == "RUN_CANCELED"
    again = stepstream("cancel", run_id, url=dev)
    assert again.returncode == 1 and "Traceback" not in again.stderr


def test_runs_lists_a_waiting_run_as_running(dev: str) -> None:
    """The dashboard calls an unfinished run "running": ``--state running`` is ``RUN_STARTED``."""
    run_id = stepstream("trigger", "approval", url=dev).stdout.strip()
    listed = stepstream("runs", "--state", "running", "--json", "--count", "100", url=dev)
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)["runs"]
    assert run_id in [run["workflowRunId"] for run in runs]
    assert {run["workflowState"] for run in runs} == {"RUN_STARTED"}
    assert stepstream("cancel", run_id, url=dev).returncode == 0


# -- logs and runs ------------------------------------------------------------------------------


def test_logs_json_is_the_design_log(dev: str, finished_run: str) -> None:
    done = stepstream("logs", finished_run, "--json", url=dev)
    assert done.returncode == 0, done.stderr
    log = json.loads(done.stdout)
    assert {
        "workflowRunId", "workflowName", "workflowState", "workflowRunCreatedAt",
        "workflowRunCompletedAt", "requestPayload", "workflowRunResponse", "error", "steps",
    } <= log.keys()  # fmt: skip
    assert log["workflowRunId"] == finished_run
    assert log["workflowName"] == "basic"
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["requestPayload"] == {"userId": "u-cli"}
    assert log["workflowRunResponse"]["success"] is True
    assert log["error"] is None
    for key in ("workflowRunCreatedAt", "workflowRunCompletedAt"):
        assert type(log[key]) is int
    assert [step["stepName"] for step in log["steps"]] == BASIC_STEPS
    for step in log["steps"]:
        assert {
            "stepName", "stepType", "state", "attempts", "startedAt", "finishedAt", "out", "error"
        } <= step.keys()  # fmt: skip
        assert step["state"] == "STEP_SUCCESS"
        assert step["attempts"] == 1
        assert type(step["startedAt"]) is int and type(step["finishedAt"]) is int


def test_logs_prints_a_table(dev: str, finished_run: str) -> None:
    done = stepstream("logs", finished_run, url=dev)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [finished_run, "basic", "RUN_SUCCESS"]
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["#", "step", "type"])
    rows = [line.split() for line in lines[header + 1 :] if line[:4].strip().isdigit()]
    assert [row[1] for row in rows] == BASIC_STEPS, done.stdout
    assert all(row[3] == "STEP_SUCCESS" for row in rows), done.stdout


def test_logs_of_a_failed_run_shows_the_error(dev: str) -> None:
    done = stepstream("trigger", "failing", url=dev)
    run_id = done.stdout.strip()
    assert wait_finished(dev, run_id)["workflowState"] == "RUN_FAILED"
    table = stepstream("logs", run_id, url=dev)
    assert table.returncode == 0, table.stderr
    assert "RUN_FAILED" in table.stdout
    assert "STEP_FAILED" in table.stdout
    assert "upstream storage answered 503" in words(table.stdout)
    # Where the code failed, per attempt; the failure function's steps named as such.
    text = words(table.stdout)
    assert "upload-report attempt 3 failed at" in text
    assert 'examples/__init__.py", line' in text and "in flaky_upload" in text
    assert "failure fn record-failure" in text and "1000000" not in text
    assert "Traceback" in table.stdout  # the log's traceback, shown on request
    listed = stepstream("runs", "--state", "failed", "--json", url=dev)  # any case, no RUN_
    assert listed.returncode == 0, listed.stderr
    assert run_id in [run["workflowRunId"] for run in json.loads(listed.stdout)["runs"]]


def test_logs_of_a_missing_run_exits_1(dev: str) -> None:
    done = stepstream("logs", "wfr_missing", url=dev)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "wfr_missing" in done.stderr
    assert "Traceback" not in done.stderr


def test_runs_filters_by_state(dev: str, finished_run: str) -> None:
    done = stepstream("runs", "--state", "RUN_SUCCESS", "--json", "--count", "100", url=dev)
    assert done.returncode == 0, done.stderr
    page = json.loads(done.stdout)
    assert {"runs", "cursor"} <= page.keys()
    assert finished_run in [run["workflowRunId"] for run in page["runs"]]
    assert {run["workflowState"] for run in page["runs"]} == {"RUN_SUCCESS"}
    table = stepstream("runs", url=dev)
    assert table.returncode == 0, table.stderr
    assert finished_run in table.stdout


def test_runs_refuses_an_unknown_state(dev: str) -> None:
    done = stepstream("runs", "--state", "DONE", url=dev)
    assert done.returncode == 2, done.stdout + done.stderr


# -- tail ---------------------------------------------------------------------------------------


class Tail:
    """``stepstream tail`` in the background; its stdout lines on a queue (a pipe read has no
    timeout of its own)."""

    def __init__(self, *args: str, url: str) -> None:
        self.process = subprocess.Popen(
            [*STEPSTREAM, "tail", *args],
            env=environment(url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until_run_finish(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + TIMEOUT
        while not events or events[-1]["data"]["type"] != "runFinish":
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no runFinish within {TIMEOUT}s: {events}") from None
            if line is None:
                stderr = self.process.stderr.read() if self.process.stderr else ""
                raise AssertionError(f"tail ended early ({self.process.poll()}): {stderr}")
            events.append(json.loads(line))
        return events

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


def check_basic_events(events: list[dict[str, Any]], run_id: str) -> None:
    assert all(set(event) == {"id", "event", "data"} for event in events)
    assert all(event["event"] == "workflow.update" for event in events)
    assert all(event["data"]["workflowRunId"] == run_id for event in events)
    ids = [tuple(map(int, event["id"].split("-"))) for event in events]
    assert ids == sorted(set(ids)), "ids repeat or go backwards"
    kinds = [(event["data"]["type"], event["data"].get("stepName")) for event in events]
    expected = [("runStart", None)]
    for step in BASIC_STEPS:
        expected += [("stepStart", step), ("stepFinish", step)]
    assert kinds == [*expected, ("runFinish", None)]
    assert events[-1]["data"]["status"] == "success"


def test_tail_history_prints_a_finished_runs_events(dev: str, finished_run: str) -> None:
    tail = Tail(finished_run, "--history", url=dev)
    try:
        events = tail.until_run_finish()
    finally:
        tail.stop()
    check_basic_events(events, finished_run)


def test_tail_follows_a_run_live(dev: str) -> None:
    """Attached while the run goes on (a run that does not exist yet is an error: see
    test_tail_of_an_unknown_run_fails_at_once); --history covers what came before."""
    run_id = f"wfr_cli-tail-{os.getpid()}"
    done = stepstream("trigger", "basic", "--id", run_id, url=dev)
    assert done.returncode == 0, done.stderr
    tail = Tail(run_id, "--history", url=dev)
    try:
        events = tail.until_run_finish()
        assert tail.process.wait(timeout=TIMEOUT) == 0  # it ends by itself after runFinish
    finally:
        tail.stop()
    check_basic_events(events, run_id)


# -- serving: a token on any non-loopback address (issue 8, item 10) ----------------------------


@pytest.mark.parametrize("command", [["dev"], ["server", "stepstream.examples:workflows"]])
def test_serving_a_public_address_without_a_token_is_refused(command: list[str]) -> None:
    done = stepstream(*command, "--host", "0.0.0.0", "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    message = words(done.stderr)
    assert "refusing to serve 0.0.0.0 without a token" in message
    assert "STEPSTREAM_TOKEN" in message and "--insecure" in message
    assert "Uvicorn running" not in done.stderr


def serve_with(
    monkeypatch: pytest.MonkeyPatch, *args: str, token: str | None = None
) -> tuple[Any, str]:
    """Run ``stepstream`` in-process with ``_serve`` replaced: the app it would serve, and the
    command's output (``SystemExit``'s code checked by ``CliRunner``)."""
    from click.testing import CliRunner

    from stepstream import cli

    served: list[Any] = []
    monkeypatch.setattr(cli, "_serve", lambda app, *rest: served.append(app))
    env = {"STEPSTREAM_TOKEN": token} if token else {}
    monkeypatch.delenv("STEPSTREAM_TOKEN", raising=False)
    result = CliRunner().invoke(cli.main, list(args), env=env)
    assert (result.exit_code == 0) == bool(served), result.output
    return (served[0] if served else None), result.output


async def host_status(app: Any, host: str) -> int:
    from tests.server.asgi import call

    headers = [(b"host", host.encode())]
    return (await call(app, "GET", "/api/workflows", headers=headers)).status


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com", ""])
def test_every_non_loopback_bind_needs_a_token_or_insecure(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    for command in (["dev"], ["server", "stepstream.examples:workflows"]):
        app, output = serve_with(monkeypatch, *command, "--host", host)
        assert app is None and "--insecure" in output, output
        app, output = serve_with(monkeypatch, *command, "--host", host, token="a-long-secret")
        assert app is not None, output
        app, output = serve_with(monkeypatch, *command, "--host", host, "--insecure")
        assert app is not None and "warning: --insecure" in output, output
        # Served open on purpose, under whatever name the network gives it.
        assert asyncio.run(host_status(app, "192.0.2.10:8000")) == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_a_loopback_bind_is_served_without_a_token(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    app, output = serve_with(monkeypatch, "dev", "--host", host)
    assert app is not None and "warning" not in output, output
    assert asyncio.run(host_status(app, "127.0.0.1:8000")) == 200
    assert asyncio.run(host_status(app, "rebound.example:8000")) == 403  # DNS rebinding


def test_every_command_running_workers_takes_a_lease() -> None:
    """A dead worker's runs resume one lease later: dev and server (with --workers) set it
    like worker does, and a lease too short to renew is refused up front."""
    for command in ("dev", "server", "worker"):
        assert "--lease" in words(stepstream(command, "--help").stdout), command
    done = stepstream("dev", "--lease", "0.1")
    assert done.returncode == 2
    assert "--lease" in done.stderr and "0.3" in done.stderr


def test_tail_of_a_run_ends_with_its_run_finish(dev: str, finished_run: str) -> None:
    done = stepstream("tail", finished_run, "--history", url=dev)  # returns by itself
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.splitlines()[-1])
    assert last["data"]["type"] == "runFinish" and last["data"]["workflowRunId"] == finished_run


def test_tail_history_of_a_resumed_run_goes_on_past_its_first_run_finish(dev: str) -> None:
    """A run canceled, then resumed, has two ``runFinish`` events: tail --history prints every
    event up to the last one, not only those of its first execution."""
    run_id = f"wfr_cli-resumed-{os.getpid()}"
    assert stepstream("trigger", "approval", "--id", run_id, url=dev).returncode == 0
    assert stepstream("cancel", run_id, url=dev).returncode == 0
    assert wait_finished(dev, run_id)["workflowState"] == "RUN_CANCELED"
    assert stepstream("resume", run_id, url=dev).returncode == 0
    notified = stepstream("notify", f"approve-{run_id}", "--run", run_id, "--data", "true", url=dev)
    assert notified.returncode == 0, notified.stderr
    assert wait_finished(dev, run_id)["workflowState"] == "RUN_SUCCESS"
    done = stepstream("tail", run_id, "--history", url=dev)
    assert done.returncode == 0, done.stderr
    kinds = [json.loads(line)["data"]["type"] for line in done.stdout.splitlines()]
    assert kinds.count("runFinish") == 2 and kinds[-1] == "runFinish", kinds
    assert json.loads(done.stdout.splitlines()[-1])["data"]["status"] == "success"


def test_tail_of_a_run_that_ends_as_it_attaches_still_ends(
    dev: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run is going when ``tail`` reads its state, and has ended before the stream is
    open: its runFinish is then in the past, and a live-only subscription waited forever."""
    from stepstream.realtime import remote

    run_id = f"wfr_cli-tail-window-{os.getpid()}"
    real = remote.subscribe_remote

    async def late(*args: Any, **kwargs: Any) -> Any:
        wait_finished(dev, run_id)  # the run ends in the window
        async with asyncio.timeout(TIMEOUT):
            async for message in real(*args, **kwargs):
                yield message

    monkeypatch.setattr(remote, "subscribe_remote", late)
    tail_in_process(dev, run_id)


def test_tail_of_a_run_that_ends_after_its_cursor_was_read_prints_the_rest(
    dev: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run ends between the read of its channel's position and the second look at its
    state: what it did since that position happened after tail started, so tail prints it
    (through runFinish) instead of saying the run had ended."""
    from stepstream.realtime import remote

    run_id = f"wfr_cli-tail-ended-{os.getpid()}"
    real = remote.latest_cursor

    async def then_wait(*args: Any, **kwargs: Any) -> str:
        cursor = await real(*args, **kwargs)
        wait_finished(dev, run_id)
        return cursor

    monkeypatch.setattr(remote, "latest_cursor", then_wait)
    assert "has ended" not in tail_in_process(dev, run_id)


def tail_in_process(dev: str, run_id: str) -> str:
    """Trigger a ``basic`` run ``run_id`` and ``stepstream tail`` it in this process (where the
    test patched what it calls); its output, checked to end with the run's runFinish."""
    from click.testing import CliRunner

    from stepstream import cli

    assert stepstream("trigger", "basic", "--id", run_id, url=dev).returncode == 0
    result = CliRunner().invoke(cli.main, ["tail", run_id], env=environment(dev))
    assert result.exit_code == 0, (result.output, result.exception)
    last = json.loads(result.output.strip().splitlines()[-1])
    assert last["data"]["type"] == "runFinish" and last["data"]["workflowRunId"] == run_id
    return result.output


EXPIRING_APP = """
from stepstream import HistoryPolicy, Realtime, WorkflowContext, Workflows

workflows = Workflows(realtime=Realtime(history=HistoryPolicy(expire_after=1)))


@workflows.workflow("approval")
async def approval(context: WorkflowContext) -> str:
    decision, _ = await context.wait_for_event("wait", f"approve-{context.workflow_run_id}")
    return await context.run("apply", lambda: str(decision))
"""


def test_tail_of_a_run_whose_history_expired_warns_of_no_gap(tmp_path: Path) -> None:
    """A run waiting longer than its channel's history lasts: nothing is stored when tail
    looks, and what expired before tail started is not a gap in what it prints."""
    with dev_of(tmp_path, "expiring", EXPIRING_APP) as url:
        run_id = f"wfr_cli-expired-{os.getpid()}"
        assert stepstream("trigger", "approval", "--id", run_id, url=url).returncode == 0
        deadline = time.monotonic() + TIMEOUT
        history = f"{url}/api/realtime/history?channel={run_id}"
        while httpx.get(history, timeout=5).json()["messages"]:  # until its events expired
            assert time.monotonic() < deadline, "the run's events never expired"
            time.sleep(0.2)
        tail = Tail(run_id, url=url)
        try:
            while not httpx.get(f"{url}/healthz", timeout=5).json()["live_channels"]:
                assert time.monotonic() < deadline, "tail never subscribed"
                time.sleep(0.05)  # waiting for tail's stream, not an assertion
            notified = stepstream("notify", f"approve-{run_id}", "--data", '"yes"', url=url)
            assert notified.returncode == 0, notified.stderr
            events = tail.until_run_finish()
            assert tail.process.wait(timeout=TIMEOUT) == 0
            stderr = tail.process.stderr.read() if tail.process.stderr else ""
        finally:
            tail.stop()
    assert "trimmed" not in stderr, stderr
    assert [e["data"]["type"] for e in events][-1] == "runFinish"
    assert events[-1]["data"]["status"] == "success"


def test_tail_against_a_server_that_answers_html_fails_cleanly(tmp_path: Path) -> None:
    """A wrong --url whose server answers every path 200 with a page: one line, no
    traceback, for a run's channel and for another."""
    import http.server

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>an app</html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        done = stepstream("tail", "wfr_some_run", url=url)

        async def page() -> None:
            from stepstream.realtime.remote import history_page

            await history_page(url, "some-channel")

        from stepstream.errors import BackendUnavailable

        with pytest.raises(BackendUnavailable, match="without a history page"):
            asyncio.run(page())
    finally:
        server.shutdown()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "without JSON" in done.stderr, done.stderr


def test_tail_of_a_finished_run_says_so_at_once(dev: str, finished_run: str) -> None:
    """Without --history nothing more would ever arrive: it says so instead of waiting."""
    done = stepstream("tail", finished_run, url=dev)
    assert done.returncode == 0 and done.stdout == ""
    assert f"run {finished_run} has ended (RUN_SUCCESS): --history" in done.stderr


def test_tail_of_an_unknown_run_fails_at_once(dev: str) -> None:
    done = stepstream("tail", "wfr_no_such_run", url=dev)
    assert done.returncode == 1, done.stdout
    assert "wfr_no_such_run" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_while_following_leaves_the_run_going(dev: str) -> None:
    label = f"ctrl-c-{time.monotonic_ns()}"  # finds this test's run, not an earlier one
    follow = subprocess.Popen(
        [*STEPSTREAM, "trigger", "approval", "--follow", "--label", label],
        env=environment(dev),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        runs: list[str] = []
        while not runs:  # wait until the run exists and the follower is attached
            assert time.monotonic() < deadline, "no approval run appeared"
            page = httpx.get(f"{dev}/api/runs", params={"label": label}, timeout=10)
            runs = [r["workflowRunId"] for r in page.json()["runs"]]
            time.sleep(0.2)  # polling the API for the follower's run, not an assertion
        time.sleep(1.0)
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=TIMEOUT)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 130, err
    assert "goes on" in err and "stepstream logs wfr_" in err
    run_id = RUN_ID.search(err)
    assert run_id is not None and run_id.group() == runs[0]
    assert httpx.get(f"{dev}/api/runs/{run_id.group()}", timeout=10).json()["status"] != "failed"


def test_times_are_shown_in_local_time_naming_the_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A schedule's next run in Europe/Berlin, viewed on a UTC machine, said 01:30:00 with no
    zone: the viewer could not tell which clock it was."""
    import time

    from stepstream.console import local_time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        assert local_time(1_764_831_600_000) == "2025-12-04 08:00:00 CET"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_piped_tables_fold_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """Written to a pipe, a schedules table was folded at rich's 80 columns: an id in two
    pieces for a script to put back together."""
    from stepstream.cli_schedules import print_schedules

    schedule_id = "nightly-report-for-every-customer-of-the-emea-region-" + "x" * 40
    print_schedules(
        [
            {
                "id": schedule_id,
                "workflow": "report",
                "cron": "30 2 * * *",
                "timezone": "Europe/Berlin",
                "paused": False,
                "nextRunAt": 1_764_831_600_000,
                "lastRunId": None,
                "lastError": None,
            },
            {
                "id": "refused",
                "workflow": "report",
                "cron": "30 2 * * *",
                "timezone": "UTC",
                "paused": False,
                "nextRunAt": 1_764_831_600_000,
                "lastRunId": None,
                "lastError": "the flow control key [of] workflow 'report' cannot be computed",
            },
        ]  # type: ignore[list-item]
    )
    out = capsys.readouterr().out
    assert schedule_id in out
    assert "not started: the flow control key [of] workflow" in words(out)


NO_REALTIME_APP = """
from stepstream import Workflows

workflows = Workflows()  # no Realtime: the server sends no events for its runs


@workflows.workflow("quiet")
async def quiet(context):
    await context.run("first", lambda: 1)
    await context.sleep("nap", 0.5)
    return await context.run("second", lambda: 2)
"""


def test_follow_ends_from_the_log_when_the_server_sends_no_events(tmp_path: Path) -> None:
    """An app whose ``Workflows`` has no ``Realtime``: ``trigger --follow`` used to wait for a
    ``runFinish`` that never comes; it ends as the run's log says, showing its steps."""
    with dev_of(tmp_path, "quiet", NO_REALTIME_APP) as url:
        done = stepstream("trigger", "quiet", "--follow", url=url)
    assert done.returncode == 0, done.stdout + done.stderr
    text = words(done.stdout)
    assert "no events came for this run" in text
    assert "RUN_SUCCESS" in text and "first" in text and "second" in text
    run_id = done.stdout.split()[1]  # "run wfr_..."
    with dev_of(tmp_path, "quiet", NO_REALTIME_APP) as url:
        tail = stepstream("tail", run_id, "--history", url=url)  # waited for ever, too
    assert tail.returncode == 0 and tail.stdout == "", tail.stdout + tail.stderr
    assert "its channel holds no event" in words(tail.stderr)
