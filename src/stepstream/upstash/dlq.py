"""QStash's dead-letter queue over stepstream's failed runs (docs/upstash-protocol.md §12,
DESIGN §14): ``client.dlq`` and ``client.cancel`` with a filter.

A gateway run that failed *is* its DLQ entry: the ``dlqId`` is the run id. Resuming it is
``recovery.resume`` (its recorded steps are kept and delivered again, the failed one gets
fresh retries); restarting it is ``recovery.restart`` (a new run with the same payload and
headers). Either may override the run's retries and flow control from then on (the SDK's
``retries`` and ``flowControl`` options, sent as headers). A restarted or deleted entry is
marked out of the DLQ (the failed run stays, as in the logs). The failure callback of every
failed run is kept, so ``retryFailureFunction`` can send it again.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers, QueryParams

from stepstream.backends.base import RunFilter
from stepstream.errors import BadRequest, RunConflict, RunNotFound
from stepstream.records import FlowLimits, RunRecord, RunState, dumps
from stepstream.upstash.messages import (
    FAILURE_FORWARD,
    FAILURE_URL,
    FAILURES,
    KEPT_APART,
    NOT_DELIVERED,
    RETRIES,
    flow_of,
)
from stepstream.upstash.names import WORKFLOW, sdk_labels
from stepstream.upstash.outbound import call_failure_url
from stepstream.upstash.text import MAX_HEADER_COUNT, count_of, query_cursor, query_ms
from stepstream.workflow import recovery
from stepstream.workflow.flow import FlowControl

if TYPE_CHECKING:
    from stepstream.workflow.engine import Engine

FAILURE_CALLS = "upstash-failure-calls"  # entry kind: a failed run's failure callback request
OUT_OF_DLQ = "upstash-dlq-out"  # entry kind: failed runs restarted or deleted from the DLQ
FILTERS = frozenset(
    {
        "count",
        "cursor",
        "label",
        "fromDate",
        "toDate",
        "workflowUrl",
        "workflowUrlExactMatch",
        "workflowRunId",
        "source",
    }
)
DEFAULT_COUNT = 100
MAX_COUNT = 1000


async def failure_call(
    engine: Engine, run: RunRecord, payload: dict[str, Any], message_id: str, reason: str
) -> None:
    """Keep the failure callback of ``run`` (body ``payload``, docs §8), and make it if the run
    has a failure URL."""
    # Hop-by-hop and framing headers of the trigger request are not the callback's (its
    # ``content-length`` would cut the callback's own body: the Python SDK forwards them all).
    headers = {
        name[len(FAILURE_FORWARD) :]: value
        for name, value in run.headers.items()
        if name.startswith(FAILURE_FORWARD) and name[len(FAILURE_FORWARD) :] not in NOT_DELIVERED
    }
    headers.update(
        {
            "content-type": "application/json",
            "upstash-workflow-runid": run.id,
            "upstash-workflow-url": run.headers.get("upstash-workflow-url", ""),
            "upstash-workflow-is-failure": "true",
            "upstash-workflow-failure-callback": "true",
        }
    )
    stored = {
        "url": run.headers.get(FAILURE_URL, ""),
        "headers": headers,
        "payload": payload,
        "messageId": message_id,
        "reason": reason,
    }
    await engine.backend.put_entry(FAILURE_CALLS, run.id, dumps(stored))
    if stored["url"]:
        await call_again(engine, run.id, stored)


async def call_again(engine: Engine, run_id: str, stored: dict[str, Any]) -> dict[str, Any]:
    """Make a kept failure callback; keep what it answered (the logs' ``failureFunction``)."""
    payload = stored["payload"]
    outcome = await call_failure_url(stored["url"], stored["headers"], payload)
    outcome.update(
        messageId=stored["messageId"],
        failStatus=payload["status"],
        failResponse=stored["reason"],
        failHeaders=payload["header"],
    )
    await engine.backend.put_entry(FAILURES, run_id, dumps(outcome))
    return outcome


@dataclass
class Selected:
    runs: list[RunRecord]
    cursor: str | None


async def select(engine: Engine, params: QueryParams, state: RunState, ids: str) -> Selected:
    """The gateway runs in ``state`` that the query names: by ``ids`` (repeated), else by its
    filter (``label``, ``fromDate``/``toDate``, ``workflowUrl`` prefix or exact,
    ``workflowRunId``), a page of ``count`` from ``cursor``. Failed runs out of the DLQ are
    left out."""
    unknown = sorted(set(params) - FILTERS - {ids})
    if unknown:
        raise BadRequest(f"this gateway does not filter runs by {', '.join(unknown)[:200]}")
    cursor = None
    named = params.getlist(ids) or params.getlist("workflowRunId")
    if named:
        found = [await engine.backend.get_run(run_id) for run_id in named[:MAX_COUNT]]
    else:
        count = count_of(params.get("count") or str(DEFAULT_COUNT))
        if count is None or not 1 <= count <= MAX_COUNT:
            raise BadRequest(f"count must be 1 to {MAX_COUNT}")
        where = RunFilter(
            state=state.value,
            workflow=WORKFLOW,
            label=params.get("label"),
            created_after=query_ms(params, "fromDate"),
            created_before=query_ms(params, "toDate"),
        )
        page = await engine.backend.find_runs(where, cursor=query_cursor(params), count=count)
        cursor = page.cursor
        found = [await engine.backend.get_run(run.id) for run in page.runs]
    out = await engine.backend.list_entries(OUT_OF_DLQ) if state is RunState.FAILED else {}
    runs = [
        run
        for run in found
        if run is not None
        and run.workflow == WORKFLOW
        and run.state is state
        and run.id not in out
        and _url_matches(run, params)
    ]
    return Selected(runs, cursor)


def _url_matches(run: RunRecord, params: QueryParams) -> bool:
    wanted = params.get("workflowUrl")
    url = run.headers.get("upstash-workflow-url", "")
    if not wanted:
        return True
    return (
        url == wanted if params.get("workflowUrlExactMatch") == "true" else url.startswith(wanted)
    )


async def listing(engine: Engine, params: QueryParams) -> dict[str, Any]:
    """``client.dlq.list``: ``{messages: PublicDLQMessage[], cursor}``."""
    selected = await select(engine, params, RunState.FAILED, "dlqIds")
    messages = [await message(engine, run) for run in selected.runs]
    return {"messages": messages, "cursor": selected.cursor or ""}


async def message(engine: Engine, run: RunRecord) -> dict[str, Any]:
    """A failed run as a ``PublicDLQMessage``: the run's delivery, the failing answer, and its
    failure callback."""
    stored = json.loads(await engine.backend.get_entry(FAILURE_CALLS, run.id) or "{}")
    payload = stored.get("payload") or {}
    url = run.headers.get("upstash-workflow-url", "")
    default_retries = engine.registry.get(WORKFLOW).retries
    found: dict[str, Any] = {
        "dlqId": run.id,
        "messageId": stored.get("messageId", f"msg_{run.id}"),
        "url": url,
        "workflowRunId": run.id,
        "workflowCreatedAt": run.created_at,
        "workflowUrl": url,
        "header": {n: [v] for n, v in run.headers.items() if not n.startswith(KEPT_APART)},
        "body": base64.b64decode(payload.get("sourceBody", "")).decode(errors="replace"),
        "maxRetries": int(run.headers.get(RETRIES, default_retries)),
        "createdAt": run.completed_at or run.created_at,
        "callerIP": "",
        "responseStatus": payload.get("status", 500),
        "responseHeader": payload.get("header", {}),
        "responseBody": base64.b64decode(payload.get("body", "")).decode(errors="replace")
        or (run.error or ""),
    }
    if labels := sdk_labels(run):
        found.update(label=",".join(labels), labels=labels)
    if stored.get("url"):
        found["failureCallback"] = stored["url"]
    outcome = await engine.backend.get_entry(FAILURES, run.id)
    if outcome is not None:
        called = json.loads(outcome)
        found["failureCallbackInfo"] = {
            "state": called.get("state"),
            "responseStatus": called.get("responseStatus"),
            "responseBody": called.get("responseBody"),
            "responseHeaders": {},
        }
    return found


@dataclass(frozen=True, slots=True)
class Overrides:
    """What ``dlq.resume``/``restart`` change of a run from then on: its ``retries``
    (``Upstash-Retries``) and flow control (``Upstash-Flow-Control-Key`` / ``-Value``);
    ``None``: the run's own."""

    retries: int | None = None
    flow: FlowLimits | None = None

    def headers(self, run: RunRecord) -> dict[str, str] | None:
        """The run's headers with the new retries (which ``delivery.py`` reads there)."""
        return None if self.retries is None else {**run.headers, RETRIES: str(self.retries)}


def overrides(headers: Headers) -> Overrides:
    """The overrides a DLQ resume or restart sends as headers (the SDK's ``retries`` and
    ``flowControl`` options); ``BadRequest`` naming a bad header and how to write it."""
    lowered = dict(headers.items())
    retries = None
    if RETRIES in lowered:
        retries = count_of(lowered[RETRIES])
        if retries is None:
            raise BadRequest(
                f"Upstash-Retries {lowered[RETRIES].strip()[:20]!r} on a DLQ resume or restart "
                f"is not a count: give the number of retries after the first attempt, such as "
                f"3 (at most {MAX_HEADER_COUNT})"
            )
    flow = flow_of(lowered)
    return Overrides(retries, None if flow is None else FlowControl(**flow).limits(None))


async def act(
    engine: Engine, action: str, params: QueryParams, changes: Overrides | None = None
) -> dict[str, Any]:
    """``dlq.resume``, ``dlq.restart`` (``{workflowRuns, cursor}``, with ``changes``) and
    ``dlq.delete`` (``{deleted, cursor}``) on the selected DLQ entries."""
    selected = await select(engine, params, RunState.FAILED, "dlqIds")
    runs: list[dict[str, Any]] = []
    for run in selected.runs:
        try:
            new = await _act(engine, action, run, changes or Overrides())
        except (RunConflict, RunNotFound):
            continue  # resumed or deleted meanwhile
        runs.append({"workflowRunId": new.id, "workflowCreatedAt": new.created_at})
    cursor = selected.cursor or ""
    if action == "delete":
        return {"deleted": len(runs), "cursor": cursor}
    return {"workflowRuns": runs, "cursor": cursor}


async def _act(engine: Engine, action: str, run: RunRecord, changes: Overrides) -> RunRecord:
    """One DLQ entry resumed (the same run), restarted (the new run) or deleted."""
    headers, flow = changes.headers(run), changes.flow
    if action == "resume":
        await recovery.resume(engine, run.id, headers=headers, flow=flow)
        return run
    new = run
    if action == "restart":
        new_id = await recovery.restart(engine, run.id, headers=headers, flow=flow)
        found = await engine.backend.get_run(new_id)
        new = found if found is not None else run
    await engine.backend.put_entry(OUT_OF_DLQ, run.id, dumps({"at": engine.clock()}))
    return new


async def retry_callback(engine: Engine, dlq_id: str) -> dict[str, Any]:
    """``dlq.retryFailureFunction``: send the run's failure callback again."""
    run = await engine.backend.get_run(dlq_id)
    stored = await engine.backend.get_entry(FAILURE_CALLS, dlq_id)
    if run is None or run.workflow != WORKFLOW or run.state is not RunState.FAILED:
        raise RunNotFound(dlq_id)
    if stored is None or not json.loads(stored)["url"]:
        raise BadRequest(f"run {dlq_id} has no failure function or failure URL to call")
    outcome = await call_again(engine, dlq_id, json.loads(stored))
    answer: dict[str, Any] = {"workflowRunId": run.id, "workflowCreatedAt": run.created_at}
    if outcome["state"] != "CALLBACK_SUCCESS":
        answer["error"] = f"the failure callback answered {outcome.get('responseStatus')}"
    return answer
