"""The threads that run plain ``def`` step bodies (``workflow/threads.py``): reuse, the limit,
cancelling a job that has not started, closing, and what a body sees of its caller."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from stepstream import WorkflowContext, Workflows
from stepstream.workflow.threads import StepThreads
from tests.workflow.helpers import Harness, wait_for_state

ROOT = Path(__file__).resolve().parents[2]


def names(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def wait(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_one_thread_serves_jobs_that_come_one_after_another() -> None:
    threads = StepThreads(8, "t-reuse")
    try:
        for i in range(20):
            done = threading.Event()
            threads.submit(done.set)
            assert done.wait(5), i
            wait(lambda: threads._idle == 1)  # back to waiting before the next job comes
        assert names("t-reuse") == ["t-reuse-1"]
    finally:
        threads.close()


def test_jobs_beyond_the_limit_wait_their_turn_in_order() -> None:
    threads = StepThreads(2, "t-limit")
    gate = threading.Event()
    order: list[int] = []
    try:
        for _ in range(2):
            threads.submit(lambda: gate.wait(5) and None)
        for i in range(4):
            threads.submit(lambda i=i: order.append(i))  # type: ignore[misc]
        time.sleep(0.1)
        assert order == [] and len(names("t-limit")) == 2  # every thread busy: none added
        gate.set()
        wait(lambda: len(order) == 4)
        assert sorted(order) == [0, 1, 2, 3] and len(names("t-limit")) == 2
    finally:
        threads.close()


def test_a_cancelled_job_that_had_not_started_never_runs() -> None:
    threads = StepThreads(1, "t-cancel")
    gate = threading.Event()
    started = threading.Event()
    ran: list[str] = []
    try:

        def busy() -> None:
            started.set()
            gate.wait(5)

        first = threads.submit(busy)
        assert started.wait(5)
        waiting = threads.submit(lambda: ran.append("waiting"))
        after = threads.submit(lambda: ran.append("after"))
        assert StepThreads.cancel(waiting) is True
        assert StepThreads.cancel(first) is False  # running: too late
        gate.set()
        wait(lambda: ran == ["after"])
        time.sleep(0.05)
        assert ran == ["after"]
        assert StepThreads.cancel(after) is False
    finally:
        threads.close()


def test_close_cancels_waiting_jobs_and_ends_every_thread() -> None:
    threads = StepThreads(2, "t-close")
    gate = threading.Event()
    ran: list[int] = []
    for _ in range(2):
        threads.submit(lambda: gate.wait(5) and None)
    for i in range(3):
        threads.submit(lambda i=i: ran.append(i))  # type: ignore[misc]
    wait(lambda: len(names("t-close")) == 2)
    threads.close()
    gate.set()
    wait(lambda: not names("t-close"))
    assert ran == []
    with pytest.raises(RuntimeError, match="closed"):
        threads.submit(lambda: None)


def test_idle_step_threads_never_hold_up_the_interpreters_exit() -> None:
    """A script that runs a ``def`` step and ends without closing anything exits."""
    script = textwrap.dedent(
        """
        import asyncio
        from stepstream import Workflows

        async def main():
            workflows = Workflows(backend="memory://")
            value = await workflows.engine.in_thread(lambda: 41 + 1, (), {})
            print(value, flush=True)

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


# -- through the engine --------------------------------------------------------------------

REQUEST = contextvars.ContextVar("REQUEST", default="unset")


@pytest.mark.anyio
async def test_a_def_body_sees_the_context_variables_of_the_workflow(harness: Harness) -> None:
    workflows = harness.workflows()

    @workflows.workflow("ctx", retries=0)
    async def ctx(context: WorkflowContext) -> str:
        REQUEST.set("req-7")
        return await context.run("read", REQUEST.get)

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("ctx")
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == "req-7"


@pytest.mark.anyio
async def test_a_def_body_that_timed_out_waiting_for_a_thread_never_starts() -> None:
    """Every step thread busy: a body whose caller gave up (its step's timeout) before a
    thread was free must not run later, behind the retry that replaces it."""
    workflows = Workflows(backend="memory://")
    engine = workflows.engine
    engine._threads = StepThreads(1, "t-engine")
    gate = threading.Event()
    ran: list[str] = []
    try:
        busy = asyncio.ensure_future(engine.in_thread(gate.wait, (5,), {}))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await engine.in_thread(ran.append, ("late",), {})
        gate.set()
        assert await busy is True
        assert await engine.in_thread(lambda: "next", (), {}) == "next"
        assert ran == []
    finally:
        await engine.aclose()


def test_a_body_that_outlives_its_event_loop_leaves_its_thread_usable() -> None:
    """A step timed out, its body still running, then the loop closed (one engine across two
    ``asyncio.run``): reporting to the closed loop must not kill the only thread."""
    engine = Workflows(backend="memory://").engine
    engine._threads = StepThreads(1, "t-closed-loop")

    async def first() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await engine.in_thread(time.sleep, (0.3,), {})

    async def second() -> str:
        async with asyncio.timeout(5):
            return str(await engine.in_thread(lambda: "ran", (), {}))

    asyncio.run(first())
    time.sleep(0.4)  # the body ends after its loop closed
    assert asyncio.run(second()) == "ran"
    engine._threads.close()


def test_an_idle_thread_keeps_nothing_of_its_last_body() -> None:
    class Big:
        pass

    async def run(engine: Any) -> tuple[weakref.ref[Big], weakref.ref[Big]]:
        arg, result = Big(), Big()
        refs = weakref.ref(arg), weakref.ref(result)
        assert await engine.in_thread(lambda _: result, (arg,), {}) is result
        return refs

    engine = Workflows(backend="memory://").engine
    refs = asyncio.run(run(engine))
    wait(lambda: engine._threads._idle == 1)
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    engine._threads.close()


def test_closing_the_engine_cancels_the_callers_of_bodies_still_queued() -> None:
    async def main() -> None:
        engine = Workflows(backend="memory://").engine
        engine._threads = StepThreads(1, "t-drop")
        gate = threading.Event()
        busy = asyncio.ensure_future(engine.in_thread(gate.wait, (5,), {}))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(engine.in_thread(lambda: "ran", (), {}))
        await asyncio.sleep(0.05)
        await engine.aclose()
        gate.set()
        assert await busy is True
        done, _ = await asyncio.wait([queued], timeout=5)
        assert done and queued.cancelled()

    asyncio.run(main())


def test_a_thread_that_failed_to_start_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = StepThreads(1, "t-start")
    real = threading.Thread.start
    failures = iter([RuntimeError("can't start new thread")])

    def start(self: threading.Thread) -> None:
        for failure in failures:
            raise failure
        real(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(RuntimeError, match="start new thread"):
        threads.submit(lambda: None)
    done = threading.Event()
    threads.submit(done.set)
    assert done.wait(5)
    threads.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_threads() -> None:
    threads = StepThreads(2, "t-fork")
    first = threading.Event()
    threads.submit(first.set)
    assert first.wait(5)
    wait(lambda: threads._idle == 1)  # the parent's thread waits: the child has none of it
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if a job runs
        ran = threading.Event()
        threads.submit(ran.set)
        os._exit(0 if ran.wait(5) else 1)
    _, status = os.waitpid(pid, 0)
    threads.close()
    assert os.waitstatus_to_exitcode(status) == 0
