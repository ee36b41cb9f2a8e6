"""The QStash gateway against hostile or odd clients: whatever a client sends, it gets a 4xx
naming the problem (never a 500), and what the gateway accepted can be delivered and listed.
Plain httpx for the hostile requests; a small Python endpoint where a run must be delivered.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.upstash.test_gateway import AUTH, serve_uvicorn, stepstream_server

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("signing_key"),
]

NOWHERE = "http://127.0.0.1:9/wf"  # never delivered to: these servers have no worker
DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser can not nest


def init(run_id: str, url: str = NOWHERE, body: str = "{}", **headers: str) -> dict[str, Any]:
    """An Init message, as ``client.trigger`` batches it."""
    return {
        "destination": url,
        "headers": {"Upstash-Workflow-RunId": run_id, "Upstash-Workflow-Init": "true", **headers},
        "body": body,
    }


def step(run_id: str, record: dict[str, Any], url: str = NOWHERE) -> dict[str, Any]:
    """A step result message, as the SDK batches it."""
    return {
        "destination": url,
        "headers": {"Upstash-Workflow-RunId": run_id, "Upstash-Workflow-Init": "false"},
        "body": json.dumps(record),
    }


async def refused(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.json()["error"], response.text


@asynccontextmanager
async def gateway(tmp_path: Path, workers: int = 0) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async with (
        stepstream_server(tmp_path / "hostile.db", workers=workers) as base,
        httpx.AsyncClient(timeout=10, headers=AUTH) as client,
    ):
        yield base, client


async def test_a_bad_cursor_is_a_400(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (base, client):
        for cursor in ("garbage", "eyJhIjoxfQ", "%00", "-1", "9" * 30):
            for method, path in (
                ("GET", "/qstash/v2/workflows/events"),
                ("GET", "/qstash/v2/dlq"),
                ("DELETE", "/qstash/v2/workflows/runs"),
                ("POST", "/qstash/v2/workflows/dlq/resume"),
                ("DELETE", "/qstash/v2/workflows/dlq"),
            ):
                response = await client.request(method, f"{base}{path}?count=5&cursor={cursor}")
                await refused(response, "cursor")


async def test_json_nested_too_deeply_for_python_is_text_or_a_400(tmp_path: Path) -> None:
    """A payload or event data Python's parser can not nest is kept as its text (which the SDK
    parses back); where JSON is required it is a 400, never a ``RecursionError``'s 500."""
    async with gateway(tmp_path) as (base, client):
        batch = f"{base}/qstash/v2/batch"
        assert (await client.post(batch, json=[init("wfr_deep", body=DEEP)])).status_code == 200
        run = await client.get(f"{base}/api/runs/wfr_deep")
        assert run.json()["requestPayload"] == DEEP
        await refused(await client.post(batch, content=DEEP), "JSON array")
        notified = await client.post(f"{base}/qstash/v2/notify/evt_deep", content=DEEP)
        assert notified.status_code == 200, notified.text
        ended = await client.request(
            "DELETE", f"{base}/qstash/v2/workflows/runs/wfr_deep?cancel=false", content=DEEP
        )
        await refused(ended, "JSON")
        message = step("wfr_deep", {"stepId": 1, "stepName": "a", "stepType": "Run"})
        message["body"] = DEEP
        await refused(await client.post(batch, json=[message]), "JSON")
        record = {"stepId": 1, "stepName": "a", "stepType": "Run", "out": DEEP}
        await refused(await client.post(batch, json=[step("wfr_deep", record)]), "JSON")
        waited = await client.post(
            f"{base}/qstash/v2/wait/evt_1",
            content=DEEP,
            headers={"Upstash-Workflow-RunId": "wfr_deep"},
        )
        await refused(waited, "JSON")


async def test_delays_no_clock_reaches_are_a_400(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (base, client):
        batch = f"{base}/qstash/v2/batch"
        for delay in ("99999999999999999d", "999999999999s", "10000000000000h"):
            message = init("wfr_far", **{"Upstash-Delay": delay})
            await refused(await client.post(batch, json=[message]), "Upstash-Delay")
        assert (await client.post(batch, json=[init("wfr_sleeper")])).status_code == 200
        nap = step("wfr_sleeper", {"stepId": 1, "stepName": "nap", "stepType": "SleepFor"})
        nap["headers"]["Upstash-Delay"] = "999999999999999d"
        await refused(await client.post(batch, json=[nap]), "Upstash-Delay")
        plain = await client.post(
            f"{base}/qstash/v2/publish/{NOWHERE}", headers={"Upstash-Delay": "99999999999999d"}
        )
        await refused(plain, "Upstash-Delay")


async def test_step_ids_beyond_any_run_are_a_400(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (base, client):
        batch = f"{base}/qstash/v2/batch"
        assert (await client.post(batch, json=[init("wfr_far_step")])).status_code == 200
        huge = 10**21
        records = [
            {"stepId": huge, "stepName": "a", "stepType": "Run", "out": "1"},
            {"stepId": 0, "stepName": "a", "stepType": "Run", "concurrent": 2, "targetStep": huge},
            {"stepId": huge, "stepName": "a", "stepType": "Run", "concurrent": 2, "out": "1"},
        ]
        for record in records:
            await refused(await client.post(batch, json=[step("wfr_far_step", record)]), "step")
        waited = await client.post(
            f"{base}/qstash/v2/wait/evt_far",
            json={"step": {"stepId": huge, "stepName": "w", "stepType": "Wait"}},
            headers={"Upstash-Workflow-RunId": "wfr_far_step"},
        )
        await refused(waited, "step")


Publisher = Callable[[httpx.AsyncClient, str, list[dict[str, Any]]], Awaitable[None]]


@asynccontextmanager
async def fake_sdk(base: str, publish: Publisher) -> AsyncIterator[str]:
    """An endpoint that answers deliveries as the SDK does: ``publish(client, run_id,
    history)`` publishes (or ends the run), then it answers 200. Yields its URL."""

    async def delivered(request: Request) -> JSONResponse:
        body = await request.body()
        history = json.loads(body) if body else []
        async with httpx.AsyncClient(timeout=10, headers=AUTH) as client:
            await publish(client, request.headers["upstash-workflow-runid"], history)
        return JSONResponse({"ok": True}, headers={"Upstash-Workflow-Sdk-Version": "1"})

    app = Starlette(routes=[Route("/wf", delivered, methods=["POST"])])
    async with serve_uvicorn(app) as url:
        yield f"{url}/wf"


async def ended(client: httpx.AsyncClient, base: str, run_id: str) -> dict[str, Any]:
    """``client.logs`` of ``run_id`` once it ended."""
    url = f"{base}/qstash/v2/workflows/events?workflowRunId={run_id}"
    with anyio.fail_after(15):
        while True:
            response = await client.get(url)
            assert response.status_code == 200, response.text
            runs = response.json()["runs"]
            if runs and runs[0]["workflowState"] != "RUN_STARTED":
                return dict(runs[0])
            await anyio.sleep(0.05)  # polling the run, not an assertion


async def test_a_result_with_a_lone_surrogate_is_listed(tmp_path: Path) -> None:
    """JavaScript strings may hold lone surrogates (an emoji cut in half by ``slice``);
    ``JSON.stringify`` writes them as ``\\ud83d``. The step is delivered back as it came, and
    ``client.logs`` lists it (escaped) instead of failing to encode it."""
    cut = json.dumps("\ud83dab")  # JSON.stringify("😀".slice(0, 1) + "ab"): '"\\ud83dab"'
    seen: list[str] = []

    async def sdk(client: httpx.AsyncClient, run_id: str, history: list[dict[str, Any]]) -> None:
        if len(history) == 1:
            record = {"stepId": 1, "stepName": "cut", "stepType": "Run", "out": cut}
            await client.post(f"{base}/qstash/v2/batch", json=[step(run_id, record, url)])
            return
        seen.append(json.loads(base64.b64decode(history[1]["body"]))["out"])
        path = f"{base}/qstash/v2/workflows/runs/{run_id}?cancel=false"
        await client.request("DELETE", path, content=cut)

    async with gateway(tmp_path, workers=1) as (base, client), fake_sdk(base, sdk) as url:
        trigger = await client.post(f"{base}/qstash/v2/batch", json=[init("wfr_cut", url)])
        assert trigger.status_code == 200, trigger.text
        log = await ended(client, base, "wfr_cut")
        assert log["workflowState"] == "RUN_SUCCESS"
        assert seen == [cut]  # delivered back as published
        assert log["steps"][1]["steps"][0]["out"] in ("\ud83dab", "\ufffdab")
        assert log["workflowRunResponse"] in (cut, json.dumps("\ufffdab"))
        # stepstream's own run log (the dashboard's, the CLI's) answers it too, not a 500.
        native = await client.get(f"{base}/api/runs/wfr_cut")
        assert native.status_code == 200, native.text
        assert "\ufffdab" in {step["out"] for step in native.json()["steps"]}


async def test_headers_no_delivery_can_carry_are_refused_at_the_trigger(tmp_path: Path) -> None:
    """``client.trigger({headers})`` puts the headers in the batch's JSON, where any text
    fits; a delivery is HTTP/1.1, where a header value holds no line break or NUL and (as
    h11 and httpx send them) only ASCII. Such a header is a 400 naming it at the trigger,
    not a run whose every delivery fails."""
    async with gateway(tmp_path) as (base, client):
        batch = f"{base}/qstash/v2/batch"
        bad = {
            "Upstash-Forward-X-Name": "José",
            "Upstash-Forward-X-Smuggle": "a\r\nX-Injected: 1",
            "Upstash-Forward-X-Nul": "a\x00b",
            "Upstash-Forward-X Space": "1",
            "Upstash-Failure-Callback-Forward-X-Name": "José",
        }
        for name, value in bad.items():
            response = await client.post(batch, json=[init("wfr_hdr", **{name: value})])
            await refused(response, name.lower().split("-forward-")[-1])
        plain = [{"destination": NOWHERE, "headers": {"Upstash-Forward-X-Name": "José"}}]
        await refused(await client.post(batch, json=plain), "x-name")
        fine = init("wfr_hdr", **{"Upstash-Forward-X-Name": "Jose", "Upstash-Forward-Empty": ""})
        assert (await client.post(batch, json=[fine])).status_code == 200
        call = {
            "destination": NOWHERE,
            "headers": {
                "Upstash-Workflow-RunId": "wfr_hdr",
                "Upstash-Callback": NOWHERE,
                "Upstash-Callback-Forward-Upstash-Workflow-StepId": "1",
                "Upstash-Callback-Forward-Upstash-Workflow-StepName": "fetch",
                "Upstash-Forward-Authorization": "Bearer café",
            },
        }
        await refused(await client.post(batch, json=[call]), "authorization")
        call["headers"]["Upstash-Forward-Authorization"] = "Bearer cafe"
        call["headers"]["Upstash-Callback-Forward-Upstash-Workflow-StepId"] = (
            "\u0661"  # ARABIC-INDIC DIGIT ONE: isdigit(), not a count
        )
        await refused(await client.post(batch, json=[call]), "step's id")
        for method in ("G T", "GÉT", "POST\r\nX: 1", ""):
            call["headers"]["Upstash-Callback-Forward-Upstash-Workflow-StepId"] = "1"
            call["headers"]["Upstash-Method"] = method
            await refused(await client.post(batch, json=[call]), "Upstash-Method")
            plain = [{"destination": NOWHERE, "headers": {"Upstash-Method": method}}]
            await refused(await client.post(batch, json=plain), "Upstash-Method")


async def test_constants_javascript_does_not_parse_are_not_json(tmp_path: Path) -> None:
    """``NaN`` and ``Infinity`` parse in Python but not in ``JSON.parse``: not a step's
    ``out`` (a 400, not a ``client.logs`` that fails to render it), and event data or a
    payload holding them is text, as the SDK reads it."""
    async with gateway(tmp_path) as (base, client):
        batch = f"{base}/qstash/v2/batch"
        assert (await client.post(batch, json=[init("wfr_nan", body="NaN")])).status_code == 200
        assert (await client.get(f"{base}/api/runs/wfr_nan")).json()["requestPayload"] == "NaN"
        for out in ("NaN", "Infinity", "[-Infinity]"):
            record = {"stepId": 1, "stepName": "a", "stepType": "Run", "out": out}
            await refused(await client.post(batch, json=[step("wfr_nan", record)]), "JSON")


@asynccontextmanager
async def raw_endpoint(answer: bytes) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server answering every request with the bytes ``answer`` (then closing): its URL
    and the sizes of the requests it got."""
    got: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(len(await reader.read(65536)))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/wf", got
    finally:
        server.close()


def http_answer(status: str, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


RETRY_ONCE = {"Upstash-Retries": "1", "Upstash-Retry-Delay": "100"}


@pytest.mark.parametrize("body", [DEEP.encode(), b"NaN", b'{"a": [Infinity]}'])
async def test_an_answer_json_can_not_store_is_a_failed_attempt(
    tmp_path: Path, body: bytes
) -> None:
    """An endpoint answering JSON Python can not nest, or with ``NaN``, gets its retries and
    the run fails naming the answer, instead of the delivery crashing the run at once."""
    async with (
        gateway(tmp_path, workers=1) as (base, client),
        raw_endpoint(http_answer("500 Oops", body)) as (url, got),
    ):
        message = init("wfr_garbled", url, **RETRY_ONCE)
        assert (await client.post(f"{base}/qstash/v2/batch", json=[message])).status_code == 200
        log = await ended(client, base, "wfr_garbled")
        assert log["workflowState"] == "RUN_FAILED"
        assert len(got) == 2  # the first attempt and its retry
        (failed,) = log["steps"][-1]["steps"]
        assert failed["errors"][0]["error"].startswith("the endpoint answered 500")


async def test_a_retry_after_beyond_any_clock_waits_a_day(tmp_path: Path) -> None:
    answer = http_answer("429 Slow Down", b"{}", "retry-after: 99999999999999999999")
    async with (
        gateway(tmp_path, workers=1) as (base, client),
        raw_endpoint(answer) as (url, got),
    ):
        message = init("wfr_later", url, **RETRY_ONCE)
        assert (await client.post(f"{base}/qstash/v2/batch", json=[message])).status_code == 200
        with anyio.fail_after(10):
            while True:
                run = (await client.get(f"{base}/api/runs/wfr_later")).json()
                if run["steps"] and run["steps"][0]["state"] == "STEP_RETRY":
                    break
                await anyio.sleep(0.05)  # polling the run, not an assertion
        await anyio.sleep(1)  # a crash would retry the run now: it must be waiting instead
        run = (await client.get(f"{base}/api/runs/wfr_later")).json()
        assert run["workflowState"] == "RUN_STARTED", run
        assert got == got[:1]  # one attempt so far; the retry is a day away


async def test_bodies_that_are_not_utf8_are_refused_not_changed(tmp_path: Path) -> None:
    """The gateway keeps bodies as text: bytes that are not UTF-8 are a 400 saying so, not a
    message or event delivered with U+FFFD in their place."""
    binary = b"\x89PNG\r\n\x1a\n\xff\x00"
    async with gateway(tmp_path) as (base, client):
        published = await client.post(f"{base}/qstash/v2/publish/{NOWHERE}", content=binary)
        await refused(published, "UTF-8")
        await refused(
            await client.post(f"{base}/qstash/v2/notify/evt_png", content=binary), "UTF-8"
        )
        assert (
            await client.post(f"{base}/qstash/v2/batch", json=[init("wfr_png")])
        ).status_code == 200
        await refused(
            await client.post(f"{base}/qstash/v2/notify/wfr_png/evt_png", content=binary), "UTF-8"
        )
        finished = await client.request(
            "DELETE", f"{base}/qstash/v2/workflows/runs/wfr_png?cancel=false", content=b'"\xff"'
        )
        await refused(finished, "UTF-8")
        runs = (await client.get(f"{base}/api/runs")).json()["runs"]
        assert [run["workflowRunId"] for run in runs] == ["wfr_png"]  # no message was started


async def test_no_delivery_after_client_cancel_answered(tmp_path: Path) -> None:
    """``client.cancel`` while a delivery is open, after its step was published: once the
    cancel answered, the endpoint gets no further delivery (whose replay would run the next
    step's body for a canceled run)."""
    deliveries: list[int] = []

    async def sdk(client: httpx.AsyncClient, run_id: str, history: list[dict[str, Any]]) -> None:
        deliveries.append(len(history))
        if len(history) > 1:
            return
        record = {"stepId": 1, "stepName": "a", "stepType": "Run", "out": "1"}
        published = await client.post(f"{base}/qstash/v2/batch", json=[step(run_id, record, url)])
        assert published.status_code == 200, published.text
        canceled = await client.delete(f"{base}/qstash/v2/workflows/runs?workflowRunIds={run_id}")
        assert canceled.json() == {"cancelled": 1}

    async with gateway(tmp_path, workers=1) as (base, client), fake_sdk(base, sdk) as url:
        trigger = await client.post(f"{base}/qstash/v2/batch", json=[init("wfr_cancel", url)])
        assert trigger.status_code == 200, trigger.text
        log = await ended(client, base, "wfr_cancel")
        assert log["workflowState"] == "RUN_CANCELED"
        await anyio.sleep(1)  # a delivery after the cancel would come now
        assert deliveries == [1]


async def test_a_result_over_the_limit_as_stored_fails_the_run(tmp_path: Path) -> None:
    """200,000 CJK characters are 600 kB as the SDK sends them (under the body limit) but 1.2
    MB as JSON stores them (``\\u4e2d`` each), over ``max_result_bytes``: the run fails naming
    the limit, once, instead of the engine refusing the result and the run being executed
    (and the endpoint delivered to) again and again."""
    result = json.dumps("中" * 200_000, ensure_ascii=False).encode()
    deliveries: list[int] = []

    async def sdk(client: httpx.AsyncClient, run_id: str, history: list[dict[str, Any]]) -> None:
        deliveries.append(len(history))
        path = f"{base}/qstash/v2/workflows/runs/{run_id}?cancel=false"
        assert (await client.request("DELETE", path, content=result)).status_code == 200

    async with gateway(tmp_path, workers=1) as (base, client), fake_sdk(base, sdk) as url:
        trigger = await client.post(f"{base}/qstash/v2/batch", json=[init("wfr_big", url)])
        assert trigger.status_code == 200, trigger.text
        log = await ended(client, base, "wfr_big")
        assert log["workflowState"] == "RUN_FAILED"
        (failed,) = log["steps"][-1]["steps"]
        assert "over the limit of 1,048,576" in failed["errors"][-1]["error"]
        assert deliveries == [1]


def invoke(parent: str, child: str, **headers: str) -> dict[str, Any]:
    """``context.invoke``'s message, as the SDK publishes it (docs §10)."""
    wrapper = {
        "body": "{}",
        "headers": {},
        "workflowRunId": parent,
        "workflowRunCreatedAt": 1,
        "workflowUrl": NOWHERE,
        "step": {"stepId": 1, "stepName": "invoke-child", "stepType": "Invoke", "concurrent": 1},
    }
    return {
        "destination": NOWHERE,
        "headers": {
            "Upstash-Workflow-RunId": child,
            "Upstash-Workflow-Init": "true",
            "Upstash-Workflow-Invoke": "true",
            **headers,
        },
        "body": json.dumps(wrapper),
    }


async def test_an_invoke_the_worker_could_not_start_is_a_400(tmp_path: Path) -> None:
    """``context.invoke(..., {workflowRunId})`` with an id ``client.trigger`` would refuse, or
    the id of a run that exists: a 400 on the publish (the SDK fails the step naming it), not
    a parent failed by an engine error later, nor one waiting forever for a run that is not
    its child."""
    async with gateway(tmp_path) as (base, client):
        batch = f"{base}/qstash/v2/batch"
        for run_id in ("wfr_parent", "wfr_other"):
            assert (await client.post(batch, json=[init(run_id)])).status_code == 200
        for child, words in (
            ("wfr_order 42", "workflowRunId"),
            ("wfr_" + "a" * 200, "workflowRunId"),
            ("wfr_other", "exists already"),
            ("wfr_parent", "exists already"),
        ):
            await refused(await client.post(batch, json=[invoke("wfr_parent", child)]), words)
        labelled = invoke("wfr_parent", "wfr_child", **{"Upstash-Label": "x" * 101})
        await refused(await client.post(batch, json=[labelled]), "label")
        fine = await client.post(batch, json=[invoke("wfr_parent", "wfr_child")])
        assert fine.status_code == 200, fine.text


async def test_urls_no_request_can_go_to_are_a_400(tmp_path: Path) -> None:
    """An endpoint, failure URL, call URL or destination httpx can not send a request to (a
    control character, a broken IPv6 host) or that no header can carry: a 400 naming it,
    not a 500, nor a run whose failure callback crashes and hides why the run failed."""
    async with gateway(tmp_path) as (base, client):
        batch = f"{base}/qstash/v2/batch"
        for url in ("http://[::1/wf", "http://127.0.0.1:9/\x01wf", "http://127.0.0.1:9/é"):
            await refused(await client.post(batch, json=[init("wfr_url", url)]), "endpoint")
            failing = init("wfr_url", **{"Upstash-Failure-Callback": url})
            if url.isascii():
                await refused(await client.post(batch, json=[failing]), "failure URL")
                plain = [{"destination": url, "headers": {}}]
                await refused(await client.post(batch, json=[plain[0]]), "destination")


async def test_an_endpoint_url_with_a_space_is_delivered_encoded(tmp_path: Path) -> None:
    """``http://host/wf?a b=1``: httpx sends ``/wf?a%20b=1``; the kept-alive connections sent
    ``POST /wf?a b=1 HTTP/1.1``, a request line the endpoint refuses, every time."""

    async def sdk(client: httpx.AsyncClient, run_id: str, history: list[dict[str, Any]]) -> None:
        path = f"{base}/qstash/v2/workflows/runs/{run_id}?cancel=false"
        await client.request("DELETE", path, content=b'"done"')

    async with gateway(tmp_path, workers=1) as (base, client), fake_sdk(base, sdk) as url:
        spaced = url + "?a b=1"
        trigger = await client.post(f"{base}/qstash/v2/batch", json=[init("wfr_space", spaced)])
        assert trigger.status_code == 200, trigger.text
        log = await ended(client, base, "wfr_space")
        assert log["workflowState"] == "RUN_SUCCESS", log


async def test_a_failing_call_counts_each_attempt_once(tmp_path: Path) -> None:
    """A ``context.call`` no attempt of which gets an answer fails its step, which the run's
    ``Upstash-Retries`` retries: attempts 1, 2, 3, each counted once (the attempt started with
    the call was counted again when it failed: 2, 4, and half the retries asked for)."""
    refused_url = "http://127.0.0.1:9/nothing-listens"

    async def sdk(client: httpx.AsyncClient, run_id: str, history: list[dict[str, Any]]) -> None:
        if len(history) > 1:
            return
        call = {
            "destination": refused_url,
            "headers": {
                "Upstash-Workflow-RunId": run_id,
                "Upstash-Callback": url,
                "Upstash-Callback-Forward-Upstash-Workflow-StepId": "1",
                "Upstash-Callback-Forward-Upstash-Workflow-StepName": "fetch",
                "Upstash-Callback-Forward-Upstash-Workflow-StepType": "Call",
                "Upstash-Retries": "0",
            },
        }
        assert (await client.post(f"{base}/qstash/v2/batch", json=[call])).status_code == 200

    async with gateway(tmp_path, workers=1) as (base, client), fake_sdk(base, sdk) as url:
        run = init("wfr_callfail", url, **{"Upstash-Retries": "2", "Upstash-Retry-Delay": "10"})
        assert (await client.post(f"{base}/qstash/v2/batch", json=[run])).status_code == 200
        log = await ended(client, base, "wfr_callfail")
        assert log["workflowState"] == "RUN_FAILED"
        native = (await client.get(f"{base}/api/runs/wfr_callfail")).json()
        (fetch,) = [s for s in native["steps"] if s["stepName"] == "fetch"]
        assert [error["attempt"] for error in fetch["errors"]] == [1, 2, 3]
