"""The ``/qstash`` routes: QStash's ``/v2`` API as ``@upstash/workflow`` calls it.

POST   /qstash/v2/batch                    publish messages: an Init starts a run, a step
                                           result goes to the run's inbox
POST   /qstash/v2/publish/{destination}    one message, its options as request headers
DELETE /qstash/v2/workflows/runs/{id}      ?cancel=false: the SDK ends the run, its result as
                                           the body; ?cancel=true: cancel it
GET    /qstash/v2/workflows/runs/{id}      the run's history, for an empty delivery (``lazy.py``)
DELETE /qstash/v2/workflows/runs           client.cancel: by workflowRunIds, filter or all
POST   /qstash/v2/wait/{eventId}           context.waitForEvent: the step waits (inbox)
POST   /qstash/v2/notify/[{runId}/]{eventId}  client.notify / context.notify: Engine.notify
GET    /qstash/v2/waiters/{eventId}        client.getWaiters
GET    /qstash/v2/workflows/events         client.logs (``logs.py``)
GET    /qstash/v2/dlq                      client.dlq.list: failed runs (``dlq.py``)
POST   /qstash/v2/workflows/dlq/{action}   client.dlq.resume / restart
POST   /qstash/v2/workflows/dlq/callback/{id}  client.dlq.retryFailureFunction
DELETE /qstash/v2/workflows/dlq            client.dlq.delete
*      /qstash/v2/workflows/hooks/{user}/{runId}/{eventId}  a createWebhook URL: notifies the
                                           run's waitForWebhook (``hooks.py``); no API token

They sit behind the app's ``Guard``, so they need the API token (``QSTASH_TOKEN`` = the
stepstream token, or a base64-JSON QStash-style token whose ``Password`` is it:
``hooks.qstash_token``), all but the hook URLs. Until ``stepstream.upstash.enable``
registered the gateway's workflow, each answers 404 saying so.
"""

from __future__ import annotations

import secrets
from collections.abc import Coroutine
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from stepstream.backends.base import Waiter
from stepstream.errors import (
    BadRequest,
    NoWaiters,
    RunConflict,
    RunNotFound,
    StepstreamError,
    ValidationError,
)
from stepstream.records import RunState, dumps
from stepstream.responses import Json
from stepstream.upstash import dlq, handoff, hooks, lazy, logs, plain
from stepstream.upstash.allow import policy_of
from stepstream.upstash.messages import (
    FAILURE_URL,
    INBOX,
    Call,
    Init,
    Invoke,
    Message,
    Plain,
    StepResult,
    Wait,
    parse,
    parse_wait,
)
from stepstream.upstash.names import WORKFLOW
from stepstream.upstash.text import loads
from stepstream.workflow import recovery
from stepstream.workflow.engine import Engine, checked_labels, run_id_from, to_json

MAX_BATCH = 1000
OFF = (
    "the QStash gateway is off: call stepstream.upstash.enable(workflows) before building the "
    "app (and in every worker process) to serve @upstash/workflow apps"
)


def error(status: int, message: str) -> Json:
    """An error in QStash's shape (the SDK reads ``error``)."""
    return Json({"error": message}, status_code=status)


async def body_text(request: Request) -> str:
    """The request's body as text; ``BadRequest`` if it is not UTF-8: the gateway keeps
    bodies and event data as text, and replacing the other bytes would change them
    silently."""
    try:
        return (await request.body()).decode()
    except UnicodeDecodeError:
        raise BadRequest(
            "the body must be UTF-8 text: the stepstream QStash gateway keeps message bodies "
            "and event data as text (send binary data base64-encoded)"
        ) from None


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
                    Route("/v2/workflows/runs/{run_id}", self.fetch, methods=["GET"]),
                    Route("/v2/workflows/runs", self.cancel_many, methods=["DELETE"]),
                    Route("/v2/wait/{event_id}", self.wait, methods=["POST"]),
                    Route("/v2/notify/{event_id}", self.notify, methods=["POST"]),
                    Route("/v2/notify/{run_id}/{event_id}", self.notify, methods=["POST"]),
                    Route("/v2/waiters/{event_id}", self.waiters, methods=["GET"]),
                    Route("/v2/workflows/events", self.logs, methods=["GET"]),
                    Route("/v2/dlq", self.dlq_list, methods=["GET"]),
                    Route("/v2/workflows/dlq", self.dlq_delete, methods=["DELETE"]),
                    Route("/v2/workflows/dlq/{action}", self.dlq_act, methods=["POST"]),
                    Route(
                        "/v2/workflows/dlq/callback/{dlq_id}", self.dlq_callback, methods=["POST"]
                    ),
                    Route(
                        "/v2/workflows/hooks/{user_id}/{run_id}/{event_id}",
                        self.hook,
                        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                    ),
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
            messages = loads(await request.body())
        except ValueError:
            return error(400, "the batch must be a JSON array of messages")
        if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_BATCH:
            return error(400, f"the batch must be a JSON array of 1 to {MAX_BATCH} messages")
        try:
            parsed = [self.parse_batched(message) for message in messages]
            answers = [await self.accept(message) for message in parsed]
        except BadRequest as exc:
            return error(400, str(exc))
        return Json(answers)

    async def publish(self, request: Request) -> Response:
        if not self.enabled:
            return error(404, OFF)
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            body = await body_text(request)
            message = parse(request.path_params["destination"], headers, body, self.engine.clock())
            answer = await self.accept(message)
        except BadRequest as exc:
            return error(400, str(exc))
        return Json(answer)

    def parse_batched(self, message: Any) -> Message:
        if not isinstance(message, dict) or not isinstance(message.get("destination"), str):
            raise BadRequest("each batched message needs a destination")
        headers = message.get("headers") or {}
        body = message.get("body")
        if not isinstance(headers, dict):
            raise BadRequest("a batched message's headers must be an object")
        if body is not None and not isinstance(body, str):
            # The SDK's context.call passes an object body through as one (its types allow
            # it): the request carries its JSON text, as JSON.stringify would make it.
            body = dumps(body)
        lowered = {str(name).lower(): str(value) for name, value in headers.items()}
        return parse(message["destination"], lowered, body or "", self.engine.clock())

    async def accept(self, message: Message) -> dict[str, Any]:
        """Act on one parsed message; QStash's answer to it."""
        answer: dict[str, Any] = {"messageId": "msg_" + secrets.token_urlsafe(12)}
        self.check_destinations(message)
        if isinstance(message, Plain):
            try:
                return {"messageId": await plain.publish(self.engine, message)}
            except StepstreamError as exc:
                raise BadRequest(str(exc)) from None
        if isinstance(message, Init):
            try:
                await self.engine.trigger(
                    WORKFLOW,
                    message.payload,
                    run_id=message.run_id,
                    headers=message.headers,
                    labels=message.labels,
                    delay=message.delay,
                    flow_control=message.flow_control(),
                )
            except RunConflict:
                answer["deduplicated"] = True  # QStash dedups Init messages by run id
            except StepstreamError as exc:
                raise BadRequest(str(exc)) from None
            return answer
        if isinstance(message, Invoke):
            await self.check_child(message)
        if not await self.to_inbox(message):
            answer["deduplicated"] = True
        return answer

    async def to_inbox(self, message: StepResult | Call | Wait | Invoke) -> bool:
        """Queue a step result, plan, call or wait for the run's worker to record (or hand it
        to the run's delivery open in this process, ``handoff``); ``False`` if it is a
        duplicate (the step is recorded, or queued already)."""
        plan = isinstance(message, StepResult) and message.plan
        entry: dict[str, Any] = {"at": self.engine.clock()}
        if isinstance(message, StepResult):
            self.check_size(message.record)
            entry.update(
                kind="plan" if plan else "step", record=message.record, delay_ms=message.delay_ms
            )
        else:
            kind = {Call: "call", Wait: "wait", Invoke: "invoke"}[type(message)]
            entry.update(kind=kind, **{kind: asdict(message)})
        taken = await handoff.hand(self.engine, message.run_id, entry)
        if taken is not None:
            return taken
        run = await self.engine.backend.get_run(message.run_id)
        if run is None or run.workflow != WORKFLOW:
            raise BadRequest(f"no workflow run {message.run_id[:80]} here")
        if run.state is not RunState.STARTED:
            raise BadRequest(f"can not append to a finished workflow run ({run.state.value})")
        recorded = run.step(message.position)
        if not plan and recorded is not None and recorded.state.value == "STEP_SUCCESS":
            return False
        try:
            key = f"{'plan' if plan else 'step'}-{message.position:09d}"
            await self.engine.backend.put_entry(INBOX + run.id, key, dumps(entry), create=True)
        except RunConflict:
            return False
        return True

    async def check_child(self, invoke: Invoke) -> None:
        """``BadRequest`` for an invoke whose child the worker could not start as the
        invoking step's child: an id, labels or payload ``Engine.trigger`` refuses (else the
        invoking run fails on it), or the id of another run (else the step waits forever for
        a run that is not its child)."""
        child = invoke.child
        try:
            run_id_from(child.run_id)
            checked_labels(child.labels)
            to_json(child.payload, "the invoked run's payload")
        except ValidationError as exc:
            raise BadRequest(f"context.invoke: {exc}") from None
        existing = await self.engine.backend.get_run(child.run_id)
        if existing is not None and existing.parent != invoke.run_id:
            raise BadRequest(
                f"context.invoke: a workflow run {child.run_id[:80]} exists already: give the "
                "invoked run an id of its own"
            )

    def check_destinations(self, message: Message) -> None:
        """``BadRequest`` for a URL stepstream may not send requests to (``allow.py``): the
        endpoint and failure URL of a run, the URL of a call, the endpoint of an invoked run."""
        allow = policy_of(self.engine)
        wanted: list[tuple[str, str]] = []
        init = message.child if isinstance(message, Invoke) else message
        if isinstance(init, Init):
            if not init.url.isascii():  # every delivery carries it in a header
                raise BadRequest(
                    f"the workflow endpoint {init.url[:200]!r} must be ASCII: percent-encode "
                    "the rest, as a request's URL is"
                )
            wanted.append((init.url, "the workflow endpoint"))
            if init.headers.get(FAILURE_URL):
                wanted.append((init.headers[FAILURE_URL], "the failure URL"))
        if isinstance(message, Call):
            wanted.append((message.url, "context.call"))
        if isinstance(message, Plain):
            wanted.append((message.url, "the message's destination"))
        try:
            for url, what in wanted:
                allow.check(url, what)
        except ValidationError as exc:
            raise BadRequest(str(exc)) from None

    def check_size(self, record: dict[str, Any]) -> None:
        out = record.get("out")
        if out is not None and len(out) > self.engine.max_result_bytes:
            raise BadRequest(
                f"step {record['stepName']!r}'s result is over the limit of "
                f"{self.engine.max_result_bytes:,} bytes"
            )

    async def wait(self, request: Request) -> Response:
        """``context.waitForEvent``: the waiting step, queued for the run's worker, which
        registers it with the engine (so every way of notifying reaches it)."""
        if not self.enabled:
            return error(404, OFF)
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            body = await body_text(request)
            wait = parse_wait(request.path_params["event_id"], headers, body)
            await self.to_inbox(wait)
        except BadRequest as exc:
            return error(400, str(exc))
        return Json({"messageId": "msg_" + secrets.token_urlsafe(12)})

    async def notify(self, request: Request) -> Response:
        """``client.notify`` / ``context.notify``: ``Engine.notify`` with the body as the data
        (JSON if it parses, else the text); with a run id, kept for a wait still to come.
        ``NotifyResponse[]``: the waiters it released."""
        if not self.enabled:
            return error(404, OFF)
        event_id, run_id = request.path_params["event_id"], request.path_params.get("run_id")
        try:
            data = logs.parsed(await body_text(request))
        except BadRequest as exc:
            return error(400, str(exc))
        before = await recovery.waiters(self.engine, event_id)
        released = [w for w in before if run_id is None or w.run_id == run_id]
        try:
            await self.engine.notify(event_id, data, run_id)
        except NoWaiters:
            return Json([])
        except RunNotFound:
            return error(404, f"no workflow run {str(run_id)[:80]} here")
        except RunConflict:
            return error(400, f"workflow run {str(run_id)[:80]} has ended")
        answer = [
            {"waiter": await self.waiter(w), "messageId": f"msg_{w.run_id}_{w.position + 1}"}
            for w in released
        ]
        return Json(answer)

    async def waiters(self, request: Request) -> Response:
        """``client.getWaiters``: the steps waiting for the event, as QStash's ``Waiter``."""
        if not self.enabled:
            return error(404, OFF)
        found = await recovery.waiters(self.engine, request.path_params["event_id"])
        return Json([await self.waiter(waiter) for waiter in found])

    async def waiter(self, waiter: Waiter) -> dict[str, Any]:
        run = await self.engine.backend.get_run(waiter.run_id)
        return logs.waiter(waiter, run)

    async def logs(self, request: Request) -> Response:
        """``client.logs``: gateway runs as ``WorkflowRunLog``s."""
        if not self.enabled:
            return error(404, OFF)
        params = request.query_params
        try:
            page = await logs.page(self.engine, params)
        except BadRequest as exc:
            return error(400, str(exc))
        return Json(page)

    async def end(self, request: Request) -> Response:
        """The SDK's ``DELETE /v2/workflows/runs/{id}``: the route function returned (its
        result is the body), or ``context.cancel()`` was called (``cancel=true``)."""
        if not self.enabled:
            return error(404, OFF)
        run_id = request.path_params["run_id"]
        if request.query_params.get("cancel") == "true":
            return await self.cancel_one(run_id)
        try:
            result = await body_text(request)
            if result:
                loads(result)
        except ValueError:  # BadRequest too
            return error(400, "the run's result must be JSON text (UTF-8)")
        entry = {"kind": "finish", "result": result, "at": self.engine.clock()}
        if await handoff.hand(self.engine, run_id, entry) is not None:
            return Response(status_code=200)
        run = await self.engine.backend.get_run(run_id)
        if run is None or run.workflow != WORKFLOW:
            return error(404, f"no workflow run {run_id[:80]} here")
        if run.state is not RunState.STARTED:
            return Response(status_code=200)  # ended already: a repeated delete changes nothing
        await self.engine.backend.put_entry(INBOX + run_id, "~finish", dumps(entry))
        return Response(status_code=200)

    async def fetch(self, request: Request) -> Response:
        """The SDK's lazy fetch of a run's history (``lazy.py``)."""
        if not self.enabled:
            return error(404, OFF)
        run_id = request.path_params["run_id"]
        found = await lazy.fetched(self.engine, run_id)
        if found is None:
            return error(404, f"no workflow run {run_id[:80]} under way here")
        return Json(found)

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
        """``client.cancel`` by ids, by filter or all: ``{"cancelled": n}``."""
        if not self.enabled:
            return error(404, OFF)
        if not request.query_params:  # the SDK's {all: true} still sends count
            return error(400, "give workflowRunIds, a filter or count (all runs)")
        try:
            selected = await dlq.select(
                self.engine, request.query_params, RunState.STARTED, "workflowRunIds"
            )
        except BadRequest as exc:
            return error(400, str(exc))
        cancelled = 0
        for run in selected.runs:
            try:
                await self.engine.cancel(run.id)
            except (RunNotFound, RunConflict):
                continue
            cancelled += 1
            await self.clear(run.id)
        return Json({"cancelled": cancelled})

    async def dlq_list(self, request: Request) -> Response:
        """``client.dlq.list``: the failed gateway runs."""
        return await self.dlq_answer(dlq.listing(self.engine, request.query_params))

    async def dlq_act(self, request: Request) -> Response:
        """``client.dlq.resume`` / ``restart``: ``recovery.resume`` / ``recovery.restart``,
        with the retries and flow control the request overrides."""
        action = request.path_params["action"]
        if action not in ("resume", "restart"):
            return error(404, f"no DLQ action {action[:40]!r}: resume or restart")
        try:
            changes = dlq.overrides(request.headers)
        except BadRequest as exc:
            return error(400, str(exc))
        return await self.dlq_answer(dlq.act(self.engine, action, request.query_params, changes))

    async def dlq_delete(self, request: Request) -> Response:
        """``client.dlq.delete``: the entries leave the DLQ (the failed runs stay)."""
        return await self.dlq_answer(dlq.act(self.engine, "delete", request.query_params))

    async def dlq_callback(self, request: Request) -> Response:
        """``client.dlq.retryFailureFunction``."""
        dlq_id = request.path_params["dlq_id"]
        try:
            return await self.dlq_answer(dlq.retry_callback(self.engine, dlq_id))
        except RunNotFound:
            return error(404, f"no failed workflow run {dlq_id[:80]} in the DLQ")

    async def hook(self, request: Request) -> Response:
        """A ``createWebhook`` URL called (``hooks.py``)."""
        if not self.enabled:
            return error(404, OFF)
        try:
            return Json(await hooks.call(self.engine, request))
        except hooks.HookError as exc:
            return error(exc.status, str(exc))

    async def dlq_answer(self, work: Coroutine[Any, Any, dict[str, Any]]) -> Response:
        if not self.enabled:
            work.close()
            return error(404, OFF)
        try:
            return Json(await work)
        except BadRequest as exc:
            return error(400, str(exc))

    async def clear(self, run_id: str) -> None:
        """Drop what the run's inbox still holds: nobody will record it."""
        kind = INBOX + run_id
        for key in await self.engine.backend.list_entries(kind):
            await self.engine.backend.delete_entry(kind, key)
