"""``stepstream schedules`` and ``stepstream workflows`` as a user runs them: each a subprocess
reaching a ``stepstream dev`` (the built-in examples, on a SQLite file) through
``STEPSTREAM_URL``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.test_cli import STEPSTREAM, environment, stepstream, words
from tests.conftest import free_port
from tests.processes import serving


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("dev-schedules")
    port = free_port()
    log_path = tmp / "dev.log"
    command = [
        *STEPSTREAM, "dev", "--port", str(port),
        "--backend", f"sqlite:///{tmp / 'x.db'}", "--log-level", "warning",
    ]  # fmt: skip
    with serving(command, port=port, cwd=tmp, env=environment(), log_path=log_path) as url:
        yield url
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def listed(url: str) -> list[dict[str, Any]]:
    done = stepstream("schedules", "--json", url=url)
    assert done.returncode == 0, done.stderr
    schedules: list[dict[str, Any]] = json.loads(done.stdout)["schedules"]
    return schedules


def test_create_list_pause_resume_delete(dev: str) -> None:
    done = stepstream(
        "schedules", "create", "every-sec", "basic", "* * * * * *",
        "--timezone", "Europe/Berlin", "--data", '{"userId": "cron"}', url=dev,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("every-sec created; next run ")
    [made] = [s for s in listed(dev) if s["id"] == "every-sec"]
    assert (made["workflow"], made["timezone"], made["payload"]) == (
        "basic",
        "Europe/Berlin",
        {"userId": "cron"},
    )

    # The dev server's worker fires it: a run per second, named by its tick.
    deadline = time.monotonic() + 20
    while not next(s for s in listed(dev) if s["id"] == "every-sec")["lastRunId"]:
        assert time.monotonic() < deadline, "no tick fired"
        time.sleep(0.2)
    [made] = [s for s in listed(dev) if s["id"] == "every-sec"]
    assert made["lastRunId"].startswith("wfr_every-sec-")

    table = stepstream("schedules", url=dev).stdout
    assert "every-sec basic * * * * * *" in words(table) and "active" in table
    assert "wfr_every-" in table and "…" not in table  # long values folded, not cut

    assert stepstream("schedules", "pause", "every-sec", url=dev).stdout == "every-sec paused\n"
    table = stepstream("schedules", url=dev).stdout
    assert "paused" in table and "active" not in table
    resumed = stepstream("schedules", "resume", "every-sec", "--url", dev)
    assert resumed.stdout.startswith("every-sec resumed; next run ")
    assert stepstream("schedules", "delete", "every-sec", url=dev).returncode == 0
    assert [s for s in listed(dev) if s["id"] == "every-sec"] == []


def test_errors_say_what_is_wrong(dev: str) -> None:
    bad = stepstream("schedules", "create", "x", "basic", "0 9 * *", url=dev)
    assert bad.returncode == 1
    assert "has 4 fields" in words(bad.stderr)
    zone = stepstream(
        "schedules", "create", "x", "basic", "0 9 * * *", "--timezone", "Nowhere", url=dev
    )
    assert "unknown time zone 'Nowhere'" in words(zone.stderr)
    unknown = stepstream("schedules", "create", "x", "nope", "0 9 * * *", url=dev)
    assert unknown.returncode == 1 and "unknown workflow 'nope'" in words(unknown.stderr)
    missing = stepstream("schedules", "pause", "nope", url=dev)
    assert missing.returncode == 1 and "no schedule 'nope'" in words(missing.stderr)
    data = stepstream("schedules", "create", "x", "basic", "0 9 * * *", "--data", "{", url=dev)
    assert data.returncode == 2 and "not valid JSON" in data.stderr


def test_create_takes_its_data_from_a_file_or_standard_input(dev: str, tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_text('{"userId": "from-file"}')
    made = stepstream(
        "schedules", "create", "f", "basic", "0 9 * * *", "--data", f"@{payload}", url=dev
    )
    assert made.returncode == 0, made.stderr
    piped = stepstream(
        "schedules", "create", "p", "basic", "0 9 * * *", "--data", "-", url=dev,
        stdin='{"userId": "piped"}',
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    payloads = {s["id"]: s["payload"] for s in listed(dev) if s["id"] in ("f", "p")}
    assert payloads == {"f": {"userId": "from-file"}, "p": {"userId": "piped"}}
    for schedule_id in ("f", "p"):
        assert stepstream("schedules", "delete", schedule_id, url=dev).returncode == 0


def test_pause_and_resume_a_workflow(dev: str) -> None:
    assert stepstream("workflows", "pause", "parallel", url=dev).stdout == "parallel paused\n"
    names = stepstream("workflows", url=dev).stdout.splitlines()
    assert "parallel  paused" in names and "basic" in names
    answer = json.loads(stepstream("workflows", "--json", url=dev).stdout)
    assert answer["paused"] == ["parallel"]
    run_id = stepstream("trigger", "parallel", url=dev).stdout.strip()
    time.sleep(1.5)  # a worker would have started it by now
    assert httpx.get(f"{dev}/api/runs/{run_id}").json()["steps"] == []
    assert stepstream("workflows", "resume", "parallel", url=dev).returncode == 0
    deadline = time.monotonic() + 30
    while httpx.get(f"{dev}/api/runs/{run_id}").json()["workflowState"] != "RUN_SUCCESS":
        assert time.monotonic() < deadline, "the resumed workflow's run never finished"
        time.sleep(0.2)
    unknown = stepstream("workflows", "pause", "nope", url=dev)
    assert unknown.returncode == 1 and "unknown workflow" in unknown.stderr
