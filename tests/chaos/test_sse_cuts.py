"""Chaos scenario 4 (DESIGN §10 "no silent loss on a live stream"): SSE connections cut at random.

A real uvicorn server (``tests/realtime/sse_app.py``) streams to subscribers of every dialect
through ``proxy.ChaosProxy``, which cuts streaming connections at random (RST, a FIN in the
middle of a frame, a half-open stall) while the test process emits events round-robin over the
channels into the same store. Each subscriber resumes as its client does; afterwards, what each
handed to its application is compared with what was emitted: every event once, or a signal
(native ``gap``, or an Upstash-dialect fresh replay) right before a hole. With ``max_length``
trimming, resuming after a trimmed cursor must be signalled; without it, nothing may be.

The @upstash/realtime dialects are driven by faithful Python transcriptions of the 0.3.0 and
1.1.0 clients (``subscribers.py``), not by the packages in Chromium: in a browser both SDKs
leave a dropped stream to ``EventSource``'s own retry (their ``onerror`` returns while the state
is ``CONNECTING``), which re-requests the *original* URL after Chrome's 3 s default delay; the
SDKs' own ``last_ack`` resume runs only on a ``reconnect`` event or their 20 s / 75 s ping
watchdog. Hundreds of cuts at 3 s each do not fit the time budget, and what the stale URL
replays is the SDK's choice, not the server's. stepstream.js runs in Chromium as shipped.

Figures (``-s``): per dialect, events, cuts, holes and duplicates, reconnect time p50/p99
(from a connection breaking to the subscriber's next response beginning, seen at the proxy).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from bench.sse_clients import percentile

from stepstream import HistoryPolicy, Realtime
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, missing
from tests.chaos.conftest import FULL, scale
from tests.chaos.proxy import KINDS, ChaosProxy
from tests.chaos.subscribers import (
    Score,
    Subscriber,
    judge,
    python_native,
    upstash_v0,
    upstash_v1,
)
from tests.conftest import free_port
from tests.processes import serving

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[2]
STATIC = ROOT / "src" / "stepstream" / "server" / "static"
EVENT = "workflow.update"

CHANNELS = scale(5, 50)
EVENTS = scale(500, 10_000)
CUTS = scale(20, 200)
SECONDS = scale(4, 30)  # emission is paced over this long
SUBSCRIBERS = {"python": scale(2, 4), "v0": scale(1, 4), "v1": scale(1, 4), "js": scale(1, 4)}
TRIM = 10  # max_length of the trimmed runs: a subscriber away for a second falls behind it
STALL = (0.3, 2.0)  # seconds a half-open connection hangs before it is reset
CATCH_UP = 60  # seconds the subscribers get to receive the last events, at most
CLIENTS = {"python": python_native, "v0": upstash_v0, "v1": upstash_v1}
HAVE_CHROMIUM = CHROMIUM.exists()

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>chaos</title>
<script type="module">
  import { subscribe } from "/static/stepstream.js";
  window.log = [];
  window.last = {};
  subscribe({
    channels: new URLSearchParams(location.search).getAll("channel"),
    history: true,
    onData({ id, channel }) {
      window.log.push(["m", channel, id]);
      window.last[channel] = id;
    },
    onSystem(event) {
      if (event.type === "gap") window.log.push(["gap", event.channel, event.cursor]);
    },
  });
</script>
"""


def update(n: int) -> dict[str, Any]:
    return {"type": "stepStart", "workflowRunId": "wfr_chaos", "timestamp": n, "stepName": f"s{n}"}


@contextmanager
def sse_server(backend_url: str, log: Path) -> Iterator[int]:
    """``sse_app`` under uvicorn on the test's store; its log must stay free of tracebacks."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "tests.realtime.sse_app:app", "--app-dir", str(ROOT),
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--timeout-graceful-shutdown", "2",
    ]  # fmt: skip
    env = {**os.environ, "STEPSTREAM_TEST_BACKEND": backend_url}
    try:
        with serving(command, port=port, cwd=ROOT, env=env, log_path=log):
            yield port
    finally:
        text = log.read_text()
        if text:
            print(f"server log:\n{text[-3000:]}")
    assert "Traceback" not in text, "the server logged an exception"


def channel_sets(channels: list[str], count: int) -> Iterator[list[str]]:
    """Every other subscriber takes every channel (one multi-channel stream, cursor maps);
    the others one channel each (the single-channel fast path)."""
    for n in range(count):
        yield channels if n % 2 == 0 else [channels[n % len(channels)]]


async def open_browser(stack: AsyncExitStack) -> Any:
    """A Chromium context whose pages get ``PAGE`` and ``stepstream.js`` from the test (so
    only the SSE requests reach the proxy)."""
    if not HAVE_CHROMIUM:
        missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.async_api import async_playwright

    playwright = await stack.enter_async_context(async_playwright())
    browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    stack.push_async_callback(browser.close)
    context = await browser.new_context()

    async def page(route: Any) -> None:
        await route.fulfill(body=PAGE, content_type="text/html")

    async def script(route: Any) -> None:
        body = (STATIC / "stepstream.js").read_text()
        await route.fulfill(body=body, content_type="text/javascript")

    await context.route("**/chaos.html*", page)
    await context.route("**/static/stepstream.js", script)
    return context


class Crowd:
    """Every subscriber of the run, each on its own proxy port: Python tasks and pages."""

    def __init__(self) -> None:
        self.subscribers: list[Subscriber] = []
        self.pages: dict[str, Any] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, proxy: ChaosProxy, browser: Any, channels: list[str]) -> None:
        loop = asyncio.get_running_loop()
        for dialect, count in SUBSCRIBERS.items():
            for n, mine in enumerate(channel_sets(channels, count)):
                name = f"{dialect}-{n}"
                base = f"http://127.0.0.1:{await proxy.listen(name)}"
                sub = Subscriber(name, dialect, mine, f"{base}/api/realtime")
                self.subscribers.append(sub)
                if dialect == "js":
                    page = self.pages[name] = await browser.new_page()
                    await page.goto(f"{base}/chaos.html?" + "&".join(f"channel={c}" for c in mine))
                else:
                    self.tasks.append(loop.create_task(CLIENTS[dialect](sub)))

    async def caught_up(self, emitted: dict[str, list[str]]) -> bool:
        """Whether every subscriber has the last event of each of its channels."""
        for sub in self.subscribers:
            if sub.name in self.pages:
                sub.last = await self.pages[sub.name].evaluate("() => window.last")
            if any(sub.last.get(c) != emitted[c][-1] for c in sub.channels):
                return False
        return True

    async def stop(self) -> None:
        """Stop every subscriber and collect the pages' logs."""
        for task in self.tasks:
            if task.done() and task.exception() is not None:
                raise AssertionError(f"a subscriber gave up: {task.exception()!r}")
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for sub in self.subscribers:
            if sub.name in self.pages:
                page = self.pages.pop(sub.name)
                sub.log = [tuple(entry) for entry in await page.evaluate("() => window.log")]
                await page.close()


async def emit_steadily(
    emitter: Realtime, channels: list[str], enough_cuts: Callable[[], bool], deadline: float
) -> dict[str, list[str]]:
    """``EVENTS`` events round-robin over ``channels``, paced over ``SECONDS``; more at the
    same pace while the cutter has not made its cuts (until ``deadline``)."""
    loop = asyncio.get_running_loop()
    emitted: dict[str, list[str]] = {channel: [] for channel in channels}
    start, pace = loop.time(), SECONDS / EVENTS
    n = 0
    while n < EVENTS or (not enough_cuts() and loop.time() < deadline):
        channel = channels[n % len(channels)]
        emitted[channel].append(await emitter.channel(channel).emit(EVENT, update(n)))
        n += 1
        delay = start + n * pace - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    return emitted


async def cut_steadily(
    proxy: ChaosProxy, rng: random.Random, emitting: asyncio.Task[Any], deadline: float
) -> None:
    """About ``CUTS`` cuts spread over ``SECONDS``; at least ``CUTS`` while events go out."""
    loop = asyncio.get_running_loop()
    pause = SECONDS / (CUTS * 1.2)
    while loop.time() < deadline and not (emitting.done() and len(proxy.cuts) >= CUTS):
        await asyncio.sleep(pause * rng.uniform(0.5, 1.5))
        proxy.cut_one(rng.choice(KINDS))


async def wait_until(predicate: Callable[[], Any], within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not {what} after {within} s")
        await asyncio.sleep(0.2)  # polling, not an assertion


@pytest.mark.timeout(scale(120, 300))
@pytest.mark.parametrize("max_length", [None, TRIM], ids=["untrimmed", f"max_length={TRIM}"])
async def test_sse_cuts(
    max_length: int | None,
    backend_url: str,
    make_realtime: Callable[..., Realtime],
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    emitter = make_realtime(history=HistoryPolicy(max_length=max_length))
    await emitter.open()
    channels = [f"chaos-{n}" for n in range(CHANNELS)]
    loop = asyncio.get_running_loop()
    crowd = Crowd()
    async with AsyncExitStack() as stack:
        port = stack.enter_context(sse_server(backend_url, tmp_path / "server.log"))
        proxy = ChaosProxy(port, rng, stall=STALL)
        stack.push_async_callback(proxy.aclose)
        await crowd.start(proxy, await open_browser(stack), channels)

        async def all_streaming() -> bool:
            return all(proxy.streaming(sub.name) for sub in crowd.subscribers)

        await wait_until(all_streaming, 30, "every subscriber streaming")
        deadline = loop.time() + 3 * SECONDS
        emitting = loop.create_task(
            emit_steadily(emitter, channels, lambda: len(proxy.cuts) >= CUTS, deadline)
        )
        await cut_steadily(proxy, rng, emitting, deadline)
        emitted = await emitting
        try:
            await wait_until(lambda: crowd.caught_up(emitted), CATCH_UP, "all caught up")
        except AssertionError as exc:
            print(exc)  # the scores below say who misses what
        await crowd.stop()

    scores = {
        dialect: judge_all([sub for sub in crowd.subscribers if sub.dialect == dialect], emitted)
        for dialect in SUBSCRIBERS
    }
    report(scores, crowd.subscribers, emitted, proxy, max_length, backend_url, seed)
    assert len(proxy.cuts) >= CUTS, f"only {len(proxy.cuts)} cuts were made ({CUTS} wanted)"
    problems = []
    for dialect, score in scores.items():
        if score.unknown or score.duplicates or score.unsignalled or score.behind:
            problems.append(
                f"{dialect}: {score.unsignalled} events lost without a signal, "
                f"{score.duplicates} duplicates, {score.behind} never arrived, "
                f"{score.unknown} never emitted"
            )
        if max_length is None and score.signals:
            problems.append(f"{dialect}: {score.signals} gaps reported though nothing was trimmed")
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)


def judge_all(subscribers: list[Subscriber], emitted: dict[str, list[str]]) -> Score:
    score = Score()
    for sub in subscribers:
        score.add(judge(sub.log, emitted, sub.channels))
    return score


def report(
    scores: dict[str, Score],
    subscribers: list[Subscriber],
    emitted: dict[str, list[str]],
    proxy: ChaosProxy,
    max_length: int | None,
    backend_url: str,
    seed: int,
) -> None:
    """Print the figures of the run, per dialect."""
    reconnects = proxy.reconnect_times()
    lines = []
    for dialect, score in scores.items():
        names = {sub.name for sub in subscribers if sub.dialect == dialect}
        times = sorted(t for name in names for t in reconnects.get(name, []))
        p50, p99 = (percentile(times, q) * 1000 for q in (50, 99))
        lines.append(
            f"| {dialect} | {len(names)} | {score.events} "
            f"| {sum(cut.subscriber in names for cut in proxy.cuts)} | {score.unsignalled} "
            f"| {score.duplicates} | {score.holes} / {score.signalled} | {score.behind} "
            f"| {p50:.0f} / {p99:.0f} ({len(times)}) |"
        )
    kinds = {kind: sum(cut.kind == kind for cut in proxy.cuts) for kind in KINDS}
    print(
        f"\nSSE cuts, {backend_url.split(':')[0]}, max_length={max_length}, "
        f"{'full' if FULL else 'quick'} scale, seed {seed}: "
        f"{sum(map(len, emitted.values()))} events on {len(emitted)} channels, "
        f"{len(proxy.cuts)} cuts {kinds}\n"
        "| dialect | subscribers | events received | cuts | unsignalled lost | duplicates "
        "| signalled gaps / events in them | never arrived | reconnect ms p50 / p99 (n) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(lines)
    )
