"""Webhooks: ``context.createWebhook`` / ``context.waitForWebhook`` (docs/upstash-protocol.md
§7 "Webhooks").

``createWebhook`` is computed by the SDK itself: its result is
``{QSTASH_URL}/v2/workflows/hooks/{userId}/{runId}/{eventId}``, ``userId`` read from the
``UserID`` of the base64-JSON ``QSTASH_TOKEN`` (``qstash_token`` builds one stepstream accepts)
and ``eventId`` = ``evt_`` + 15 random characters. Any request to that URL, any method, with no
API token (the app's ``Guard`` lets exactly this route through), is a notify of ``eventId`` for
that run, with the request as the data: ``{method, proto, host, url, header, body: base64}``,
the shape the SDK's ``waitForWebhook`` rebuilds into a ``Request``. The route only answers for a
run that recorded a ``createWebhook`` step with that event id: the random event id is the
credential, and the route cannot reach the run's other waits (whose ids may be guessable).

>>> qstash_token("s3cret")  # QSTASH_TOKEN for the app, when STEPSTREAM_TOKEN=s3cret
'eyJVc2VySUQiOiAic3RlcHN0cmVhbSIsICJQYXNzd29yZCI6ICJzM2NyZXQifQ=='
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from stepstream.errors import RunConflict, RunNotFound
from stepstream.records import RunRecord, RunState, StepState, StepType
from stepstream.upstash import plans
from stepstream.upstash.messages import NOT_DELIVERED
from stepstream.upstash.names import WORKFLOW

if TYPE_CHECKING:
    from stepstream.workflow.engine import Engine

CREATE = "CreateWebhook"  # the SDK's step type whose result names the hook
USER = "stepstream"  # the UserID of the tokens ``qstash_token`` builds


def qstash_token(api_token: str, user: str = USER) -> str:
    """A ``QSTASH_TOKEN`` for an app that calls ``context.createWebhook``: the SDK reads a
    ``UserID`` from it (QStash's tokens are base64 JSON), and stepstream accepts it on
    ``/qstash`` when its ``Password`` is the API token. In a shell:
    ``printf '{"UserID":"stepstream","Password":"%s"}' "$STEPSTREAM_TOKEN" | base64 -w0``."""
    text = json.dumps({"UserID": user, "Password": api_token})
    return base64.b64encode(text.encode()).decode()


class HookError(Exception):
    """Why a hook request is not taken: ``status`` and ``message`` for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def call(engine: Engine, request: Request) -> dict[str, Any]:
    """A request to a hook URL: notify the run's ``waitForWebhook`` (kept for it if it does not
    wait yet). ``HookError`` for a hook that does not exist, or whose run has ended."""
    run_id, event_id = request.path_params["run_id"], request.path_params["event_id"]
    run = await engine.backend.get_run(run_id)
    if run is None or run.workflow != WORKFLOW or not await created(engine, run, event_id):
        raise HookError(404, f"no webhook {event_id[:40]} of a workflow run {run_id[:80]} here")
    answer = {"workflowRunId": run_id, "eventId": event_id}
    if run.state is not RunState.STARTED:
        raise HookError(410, f"workflow run {run_id[:80]} has ended ({run.state.value})")
    if any(
        s.event_id == event_id and (s.resolved or s.state is StepState.SUCCESS) for s in run.steps
    ):
        return {**answer, "alreadyCalled": True}  # the wait took an earlier call
    try:
        await engine.notify(event_id, await described(request), run_id)
    except RunConflict:
        raise HookError(410, f"workflow run {run_id[:80]} has ended") from None
    except RunNotFound:
        raise HookError(404, f"no workflow run {run_id[:80]} here") from None
    return answer


async def created(engine: Engine, run: RunRecord, event_id: str) -> bool:
    """Whether ``run`` recorded a ``createWebhook`` step whose hook has ``event_id``."""
    kinds = (await plans.load(engine, run.id)).kinds
    for step in run.steps:
        if kinds.get(step.position) != CREATE or step.type is not StepType.RUN:
            continue
        try:
            made = json.loads(step.out or "null")
        except ValueError:
            continue
        if isinstance(made, dict) and made.get("eventId") == event_id:
            return True
    return False


async def described(request: Request) -> dict[str, Any]:
    """The request as the SDK's ``waitForWebhook`` reads it back."""
    url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    header: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        if name not in NOT_DELIVERED:
            header.setdefault(name, []).append(value)
    return {
        "method": request.method,
        "proto": request.url.scheme,
        "host": request.headers.get("host", ""),
        "url": url,
        "header": header,
        "body": base64.b64encode(await request.body()).decode(),
    }
