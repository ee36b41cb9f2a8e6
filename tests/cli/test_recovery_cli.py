"""``stepstream resume``, ``restart``, ``fork``, ``delete``, ``cancel``, ``waiters`` and the run
filters as a user runs them: each a subprocess reaching a ``stepstream dev`` of a small app (on
a SQLite file) through ``STEPSTREAM_URL``. Each test reads the server's state afterwards, not
only what the command printed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.test_cli import (
    RUN_ID,
    STEPSTREAM,
    TIMEOUT,
    environment,
    stepstream,
    wait_finished,
    words,
)
from tests.conftest import free_port
from tests.processes import serving

# ``order`` fails at ``charge`` until the file card-<card>.ok exists (a fix deployed, say);
# ``reserve`` writes a line to reserve-<card>.log each time its body runs.
APP = """
from pathlib import Path

from stepstream import Realtime, WorkflowContext, Workflows

workflows = Workflows(realtime=Realtime())


@workflows.workflow("order", retries=0)
async def order(context: WorkflowContext) -> dict:
    card = context.request_payload["card"]

    def reserve() -> dict:
        with Path(f"reserve-{card}.log").open("a") as log:
            log.write("ran\\n")
        return {"reserved": card}

    def charge() -> dict:
        if not Path(f"card-{card}.ok").exists():
            raise ConnectionError("card declined")
        return {"charged": card}

    reserved = await context.run("reserve", reserve)
    charged = await context.run("charge", charge)
    return {**reserved, **charged}


@workflows.workflow("hold")
async def hold(context: WorkflowContext):
    payload = context.request_payload or {}
    event = payload.get("event", f"go-{context.workflow_run_id}")
    data, _ = await context.wait_for_event("wait-for-go", event, timeout=3600)
    return data
"""


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("dev-recovery")
    (tmp / "recoveryapp.py").write_text(APP)
    return tmp


@pytest.fixture(scope="module")
def dev(app_dir: Path) -> Iterator[str]:
    port = free_port()
    log_path = app_dir / "dev.log"
    command = [
        *STEPSTREAM, "dev", "recoveryapp:workflows", "--port", str(port),
        "--backend", f"sqlite:///{app_dir / 'x.db'}", "--log-level", "warning",
    ]  # fmt: skip
    with serving(command, port=port, cwd=app_dir, env=environment(), log_path=log_path) as url:
        yield url
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def log_of(url: str, run_id: str) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{url}/api/runs/{run_id}", timeout=10).json()
    return found


def trigger(url: str, *args: str) -> str:
    done = stepstream("trigger", *args, url=url)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert RUN_ID.fullmatch(run_id), done.stdout
    return run_id


def failed_order(url: str, card: str, *labels: str) -> str:
    """An ``order`` run that failed at ``charge``."""
    flags = [arg for label in labels for arg in ("--label", label)]
    run_id = trigger(url, "order", "--data", json.dumps({"card": card}), *flags)
    log = wait_finished(url, run_id)
    assert log["workflowState"] == "RUN_FAILED", log
    assert "card declined" in log["error"]
    return run_id


def reserved(app_dir: Path, card: str) -> int:
    """How many times ``reserve`` ran for ``card``."""
    return len((app_dir / f"reserve-{card}.log").read_text().splitlines())


def waiting(url: str, event_id: str, count: int) -> list[dict[str, Any]]:
    """The waiters of ``event_id`` once there are ``count`` of them."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        found: list[dict[str, Any]] = httpx.get(
            f"{url}/api/events/{event_id}/waiters", timeout=10
        ).json()["waiters"]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.1)  # waiting for the worker to reach the wait, not an assertion


def unique() -> str:
    return uuid.uuid4().hex[:8]


# -- resume, restart, fork ----------------------------------------------------------------------


def test_resume_continues_a_failed_run_from_its_failed_step(dev: str, app_dir: Path) -> None:
    card = unique()
    run_id = failed_order(dev, card)
    (app_dir / f"card-{card}.ok").touch()  # the fix

    done = stepstream("resume", run_id, url=dev)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"resumed {run_id}: it continues from step 'charge'\n"
    log = wait_finished(dev, run_id)
    assert log["workflowState"] == "RUN_SUCCESS", log
    assert log["workflowRunResponse"] == {"reserved": card, "charged": card}
    assert reserved(app_dir, card) == 1  # the completed step was kept, not run again

    again = stepstream("resume", run_id, url=dev)
    assert again.returncode == 1, again.stdout
    assert "only failed or canceled runs can be resumed" in words(again.stderr)
    assert "Traceback" not in again.stderr
    assert log_of(dev, run_id)["workflowState"] == "RUN_SUCCESS"


def test_restart_runs_every_step_again_as_a_new_run(dev: str, app_dir: Path) -> None:
    card = unique()
    run_id = failed_order(dev, card, "restart-me")
    (app_dir / f"card-{card}.ok").touch()

    done = stepstream("restart", run_id, "--json", url=dev)
    assert done.returncode == 0, done.stderr
    new = json.loads(done.stdout)["workflowRunId"]
    assert new != run_id and RUN_ID.fullmatch(new)
    log = wait_finished(dev, new)
    assert log["workflowState"] == "RUN_SUCCESS", log
    assert (log["restartedFrom"], log["labels"]) == (run_id, ["restart-me"])
    assert log["requestPayload"] == {"card": card}
    assert reserved(app_dir, card) == 2  # every step ran again
    assert log_of(dev, run_id)["workflowState"] == "RUN_FAILED"  # the old run is left as it was

    shown = words(stepstream("logs", new, url=dev).stdout)
    assert f"restarted from {run_id}" in shown and "labels restart-me" in shown

    human = stepstream("restart", run_id, url=dev)
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"restarted {run_id} as wfr_")
    newer = RUN_ID.findall(human.stdout)[-1]
    assert wait_finished(dev, newer)["restartedFrom"] == run_id


def test_fork_copies_the_steps_before_the_named_one(dev: str, app_dir: Path) -> None:
    card = unique()
    run_id = failed_order(dev, card)
    (app_dir / f"card-{card}.ok").touch()

    done = stepstream("fork", run_id, "--from-step", "charge", url=dev)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"forked {run_id} as wfr_")
    new = RUN_ID.findall(done.stdout)[-1]
    log = wait_finished(dev, new)
    assert log["workflowState"] == "RUN_SUCCESS", log
    assert log["forkedFrom"] == run_id
    assert [(s["stepName"], s["state"]) for s in log["steps"]] == [
        ("reserve", "STEP_SUCCESS"),
        ("charge", "STEP_SUCCESS"),
    ]
    assert reserved(app_dir, card) == 1  # copied, not executed
    assert f"forked from {run_id}" in words(stepstream("logs", new, url=dev).stdout)

    unknown = stepstream("fork", run_id, "--from-step", "ship", url=dev)
    assert unknown.returncode == 1
    assert "no step named 'ship'" in words(unknown.stderr) and "'charge'" in unknown.stderr
    missing = stepstream("fork", run_id, url=dev)
    assert missing.returncode == 2 and "--from-step" in missing.stderr


# -- delete -------------------------------------------------------------------------------------


def test_delete_asks_first_and_refuses_a_running_run(dev: str) -> None:
    run_id = failed_order(dev, unique())
    declined = stepstream("delete", run_id, url=dev, stdin="n\n")
    assert declined.returncode == 1
    assert f"delete {run_id} (order, RUN_FAILED" in declined.stdout
    assert log_of(dev, run_id)["workflowState"] == "RUN_FAILED"  # still there

    done = stepstream("delete", run_id, "--yes", url=dev)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"deleted {run_id}\n"
    assert httpx.get(f"{dev}/api/runs/{run_id}", timeout=10).status_code == 404
    gone = stepstream("delete", run_id, "--yes", url=dev)
    assert gone.returncode == 1 and run_id in gone.stderr

    running = trigger(dev, "hold")
    refused = stepstream("delete", running, "--yes", url=dev)
    assert refused.returncode == 1
    assert "is still running: cancel it" in words(refused.stderr)
    assert log_of(dev, running)["workflowState"] == "RUN_STARTED"
    assert stepstream("cancel", running, url=dev).returncode == 0


# -- cancel and resume, several runs at once ---------------------------------------------------


def test_cancel_by_label_cancels_only_those_runs(dev: str) -> None:
    label, other = f"batch-{unique()}", f"other-{unique()}"
    batch = [trigger(dev, "hold", "--label", label) for _ in range(3)]
    spared = trigger(dev, "hold", "--label", other)

    done = stepstream("cancel", "--label", label, url=dev)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "canceled 3 runs\n"
    assert {log_of(dev, run_id)["workflowState"] for run_id in batch} == {"RUN_CANCELED"}
    assert log_of(dev, spared)["workflowState"] == "RUN_STARTED"

    again = stepstream("cancel", "--label", label, "--json", url=dev)
    assert json.loads(again.stdout) == {"canceled": 0}
    assert stepstream("cancel", spared, url=dev).stdout == f"{spared} RUN_CANCELED\n"


def test_cancel_of_several_ids_goes_on_past_one_it_cannot_cancel(dev: str) -> None:
    first, second = trigger(dev, "hold"), trigger(dev, "hold")
    done = stepstream("cancel", first, "wfr_no_such_run", second, url=dev)
    assert done.returncode == 1
    assert done.stdout.split("\n") == [f"{first} RUN_CANCELED", f"{second} RUN_CANCELED", ""]
    assert "wfr_no_such_run" in done.stderr and "1 of 3 runs failed" in done.stderr
    assert log_of(dev, first)["workflowState"] == log_of(dev, second)["workflowState"]
    assert log_of(dev, second)["workflowState"] == "RUN_CANCELED"


def test_resume_by_filter_resumes_the_failed_runs_it_matches(dev: str, app_dir: Path) -> None:
    label, cards = f"retry-{unique()}", [unique(), unique()]
    runs = [failed_order(dev, card, label) for card in cards]
    untouched = failed_order(dev, unique())  # failed too, without the label
    for card in cards:
        (app_dir / f"card-{card}.ok").touch()

    done = stepstream(
        "resume", "--state", "failed", "--workflow", "order", "--label", label,
        "--since", "1h", url=dev,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "resumed 2 runs\n"
    assert {wait_finished(dev, run_id)["workflowState"] for run_id in runs} == {"RUN_SUCCESS"}
    assert log_of(dev, untouched)["workflowState"] == "RUN_FAILED"
    assert [reserved(app_dir, card) for card in cards] == [1, 1]


def test_bulk_commands_need_ids_or_a_filter_not_both(dev: str) -> None:
    for args in (("resume",), ("cancel",), ("resume", "wfr_x", "--label", "y")):
        done = stepstream(*args, url=dev)
        assert done.returncode == 2, (args, done.stdout)
        assert "run ids" in words(done.stderr)
    bad_state = stepstream("resume", "--state", "success", url=dev)
    assert bad_state.returncode == 2


# -- waiters, labels and the runs filters ------------------------------------------------------


def test_waiters_lists_the_runs_waiting_for_an_event(dev: str) -> None:
    event = f"shared-{unique()}"
    runs = {trigger(dev, "hold", "--data", json.dumps({"event": event})) for _ in range(2)}
    waiting(dev, event, 2)

    done = stepstream("waiters", event, "--json", url=dev)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)["waiters"]
    assert {w["workflowRunId"] for w in found} == runs
    assert {w["stepName"] for w in found} == {"wait-for-go"}
    assert all(isinstance(w["deadline"], int) for w in found)
    table = stepstream("waiters", event, url=dev).stdout
    assert all(run_id in table for run_id in runs) and "wait-for-go" in table

    nobody = stepstream("waiters", f"none-{unique()}", url=dev)
    assert nobody.returncode == 0 and nobody.stdout.startswith("no run waits for")
    assert stepstream("notify", event, "--data", '{"go": 1}', url=dev).stdout.strip() == "2"
    assert {wait_finished(dev, run_id)["workflowState"] for run_id in runs} == {"RUN_SUCCESS"}


def test_trigger_labels_show_in_logs_and_runs(dev: str) -> None:
    label = f"eu-{unique()}"
    run_id = trigger(dev, "hold", "--label", label, "--label", "vip")
    assert log_of(dev, run_id)["labels"] == [label, "vip"]
    assert f"labels {label}, vip" in words(stepstream("logs", run_id, url=dev).stdout)

    table = stepstream("runs", "--label", label, url=dev)
    assert table.returncode == 0, table.stderr
    [row] = [line.split() for line in table.stdout.splitlines() if "wfr_" in line]
    assert row[0] == run_id  # whole: a pipe's lines are as long as they need
    assert row[-1] == f"{label},vip"
    stepstream("cancel", run_id, url=dev)


def test_runs_filters_by_label_and_creation_time(dev: str) -> None:
    label = f"when-{unique()}"
    runs = [trigger(dev, "hold", "--label", label) for _ in range(2)]
    other = trigger(dev, "hold", "--label", f"not-{label}")

    def listed(*args: str) -> list[str]:
        done = stepstream("runs", "--label", label, "--json", *args, url=dev)
        assert done.returncode == 0, done.stderr
        page = json.loads(done.stdout)
        assert all({"labels", "restartedFrom", "forkedFrom"} <= r.keys() for r in page["runs"])
        return [r["workflowRunId"] for r in page["runs"]]

    assert listed() == runs[::-1]  # newest first, only the label's
    assert other not in listed()
    assert listed("--since", "1h") == runs[::-1]
    assert listed("--until", "1h") == []
    now_ms = int(time.time() * 1000)
    assert listed("--since", str(now_ms + 60_000)) == []
    assert listed("--until", "2999-01-01T00:00:00Z") == runs[::-1]
    bad = stepstream("runs", "--since", "yesterday", url=dev)
    assert bad.returncode == 2 and "is not a time" in words(bad.stderr)
    assert stepstream("cancel", "--label", label, url=dev).stdout == "canceled 2 runs\n"
    stepstream("cancel", other, url=dev)
