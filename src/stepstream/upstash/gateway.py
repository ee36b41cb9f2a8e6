"""The ``/qstash`` routes: QStash's ``/v2`` API as ``@upstash/workflow`` calls it.

POST   /qstash/v2/batch                    publish messages: an Init starts a run, a step
                                           result goes to the run's inbox
POST   /qstash/v2/publish/{destination}    one message, its options as request headers
DELETE /qstash/v2/workflows/runs/{id}      ?cancel=false: the SDK ends the run, its result as
                                           the body; ?cancel=true: cancel it
DELETE /qstash/v2/workflows/runs           client.cancel: ?workflowRunIds=...

They sit behind the app's ``Guard``, so they need the API token (``QSTASH_TOKEN`` = the
stepstream token). Until ``stepstream.upstash.enable`` registered the gateway's workflow, each
answers 404 saying so.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from stepstream.errors import BadRequest, RunConflict, RunNotFound, StepstreamError
from stepstream.records import RunState, dumps
from stepstream.upstash.messages import INBOX, WORKFLOW, Init, StepResult, parse
from stepstream.workflow.engine import Engine

MAX_BATCH = 1000
OFF = (
    "the QStash gateway is off: call stepstream.upstash.enable(workflows) before building the "
    "app (and in every worker process) to serve @upstash/workflow apps"
)


def error(status: int, message: str) -> JSONResponse:
    """An error in QStash's shape (the SDK reads ``error``)."""
    return JSONResponse({"error": message}, status_code=status)


class Gateway:
    """QStash's workflow API over ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def routes(self) -> list[BaseRoute]:
        return [
            Mount(
                "/qstash",
                routes=[
                    Route("/v2/batch", self.batch, methods=["POST"]),
                    Route("/v2/publish/{destination:path}", self.publish, methods=["POST"]),
                    Route("/v2/workflows/runs/{run_id}", self.end, methods=["DELETE"]),
                    Route("/v2/workflows/runs", self.cancel_many, methods=["DELETE"]),
                ],
            )
        ]

    @property
    def enabled(self) -> bool:
        return self.engine.registry.find(WORKFLOW) is not None

    async def batch(self, request: Request) -> Response:
        if not self.enabled:
            return error(404, OFF)
        try:
            messages = json.loads(await request.body())
        except ValueError:
            return error(400, "the batch must be a JSON array of messages")
        if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_BATCH:
            return error(400, f"the batch must be a JSON array of 1 to {MAX_BATCH} messages")
        try:
            parsed = [self.parse_batched(message) for message in messages]
            answers = [await self.accept(message) for message in parsed]
        except BadRequest as exc:
            return error(400, str(exc))
        return JSONResponse(answers)

    async def publish(self, request: Request) -> Response:
        if not self.enabled:
            return error(404, OFF)
        headers = {name.lower(): value for name, value in request.headers.items()}
        body = (await request.body()).decode(errors="replace")
        try:
            message = parse(request.path_params["destination"], headers, body, self.engine.clock())
            answer = await self.accept(message)
        except BadRequest as exc:
            return error(400, str(exc))
        return JSONResponse(answer)

    def parse_batched(self, message: Any) -> Init | StepResult:
        if not isinstance(message, dict) or not isinstance(message.get("destination"), str):
            raise BadRequest("each batched message needs a destination")
        headers = message.get("headers") or {}
        body = message.get("body")
        if not isinstance(headers, dict) or not isinstance(body, str | None):
            raise BadRequest("a batched message's headers must be an object, its body a string")
        lowered = {str(name).lower(): str(value) for name, value in headers.items()}
        return parse(message["destination"], lowered, body or "", self.engine.clock())

    async def accept(self, message: Init | StepResult) -> dict[str, Any]:
        """Act on one parsed message; QStash's answer to it."""
        answer: dict[str, Any] = {"messageId": "msg_" + secrets.token_urlsafe(12)}
        if isinstance(message, Init):
            try:
                await self.engine.trigger(
                    WORKFLOW,
                    message.payload,
                    run_id=message.run_id,
                    headers=message.headers,
                    labels=message.labels,
                    delay=message.delay,
                )
            except RunConflict:
                answer["deduplicated"] = True  # QStash dedups Init messages by run id
            except StepstreamError as exc:
                raise BadRequest(str(exc)) from None
            return answer
        if not await self.to_inbox(message):
            answer["deduplicated"] = True
        return answer

    async def to_inbox(self, message: StepResult) -> bool:
        """Queue a step result for the run's worker to record; ``False`` if it is a duplicate
        (the step is recorded, or queued already)."""
        run = await self.engine.backend.get_run(message.run_id)
        if run is None or run.workflow != WORKFLOW:
            raise BadRequest(f"no workflow run {message.run_id[:80]} here")
        if run.state is not RunState.STARTED:
            raise BadRequest(f"can not append to a finished workflow run ({run.state.value})")
        recorded = run.step(message.position)
        if recorded is not None and recorded.state.value == "STEP_SUCCESS":
            return False
        out = message.record.get("out")
        if out is not None and len(out) > self.engine.max_result_bytes:
            raise BadRequest(
                f"step {message.record['stepName']!r}'s result is over the limit of "
                f"{self.engine.max_result_bytes:,} bytes"
            )
        entry = {
            "kind": "step",
            "record": message.record,
            "at": self.engine.clock(),
            "delay_ms": message.delay_ms,
        }
        try:
            key = f"step-{message.position:09d}"
            await self.engine.backend.put_entry(INBOX + run.id, key, dumps(entry), create=True)
        except RunConflict:
            return False
        return True

    async def end(self, request: Request) -> Response:
        """The SDK's ``DELETE /v2/workflows/runs/{id}``: the route function returned (its
        result is the body), or ``context.cancel()`` was called (``cancel=true``)."""
        if not self.enabled:
            return error(404, OFF)
        run_id = request.path_params["run_id"]
        if request.query_params.get("cancel") == "true":
            return await self.cancel_one(run_id)
        run = await self.engine.backend.get_run(run_id)
        if run is None or run.workflow != WORKFLOW:
            return error(404, f"no workflow run {run_id[:80]} here")
        if run.state is not RunState.STARTED:
            return Response(status_code=200)  # ended already: a repeated delete changes nothing
        result = (await request.body()).decode(errors="replace")
        if result:
            try:
                json.loads(result)
            except ValueError:
                return error(400, "the run's result must be JSON text")
        entry = dumps({"kind": "finish", "result": result, "at": self.engine.clock()})
        await self.engine.backend.put_entry(INBOX + run_id, "~finish", entry)
        return Response(status_code=200)

    async def cancel_one(self, run_id: str) -> Response:
        try:
            await self.engine.cancel(run_id)
        except RunNotFound:
            return error(404, f"no workflow run {run_id[:80]} here")
        except RunConflict:
            pass  # finished already
        await self.clear(run_id)
        return Response(status_code=200)

    async def cancel_many(self, request: Request) -> Response:
        """``client.cancel({ids})``: ``{"cancelled": n}``."""
        if not self.enabled:
            return error(404, OFF)
        ids = request.query_params.getlist("workflowRunIds")
        if not ids:
            return error(400, "this gateway cancels runs by id only: give workflowRunIds")
        cancelled = 0
        for run_id in ids[:MAX_BATCH]:
            run = await self.engine.backend.get_run(run_id)
            if run is None or run.workflow != WORKFLOW or run.state is not RunState.STARTED:
                continue
            try:
                await self.engine.cancel(run_id)
            except (RunNotFound, RunConflict):
                continue
            cancelled += 1
            await self.clear(run_id)
        return JSONResponse({"cancelled": cancelled})

    async def clear(self, run_id: str) -> None:
        """Drop what the run's inbox still holds: nobody will record it."""
        kind = INBOX + run_id
        for key in await self.engine.backend.list_entries(kind):
            await self.engine.backend.delete_entry(kind, key)
