"""``Client``: trigger runs, read their logs, cancel and notify — the same calls in-process (given
a ``Workflows``) and remote (given a server URL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from stepstream.errors import (
    BackendUnavailable,
    NoWaiters,
    RunConflict,
    RunNotFound,
    StepstreamError,
    UnknownWorkflow,
    ValidationError,
)
from stepstream.records import RunRecord, RunState
from stepstream.workflow.engine import Engine, HasEngine, engine_of, to_json


def run_log(run: RunRecord) -> dict[str, Any]:
    """A run in the log shape of DESIGN §5 (Upstash's ``client.logs``)."""
    return {
        "workflowRunId": run.id,
        "workflowName": run.workflow,
        "workflowState": run.state.value,
        "workflowRunCreatedAt": run.created_at,
        "workflowRunCompletedAt": run.completed_at,
        "requestPayload": json.loads(run.payload),
        "workflowRunResponse": None if run.result is None else json.loads(run.result),
        "error": run.error if run.state is not RunState.SUCCESS else None,
        "invoker": run.parent,
        "steps": [
            {
                "stepId": step.position,
                "stepName": step.name,
                "stepType": step.type.value,
                "state": step.state.value,
                "attempts": step.attempts,
                "startedAt": step.started_at,
                "finishedAt": step.finished_at,
                "out": None
                if step.out is None or (step.resolved and step.state.value == "STEP_PROGRESS")
                else json.loads(step.out),
                "error": step.error,
            }
            for step in run.steps
        ],
    }


def _from_message(cls: type[StepstreamError]) -> Callable[[str], Exception]:
    """Rebuild a server-side error from its message (for the remote client)."""

    def build(message: str) -> Exception:
        error = cls.__new__(cls)
        StepstreamError.__init__(error, message)
        return error

    return build


ERRORS: dict[str, Callable[[str], Exception]] = {
    "unknown_workflow": _from_message(UnknownWorkflow),
    "run_not_found": _from_message(RunNotFound),
    "no_waiters": _from_message(NoWaiters),
    "conflict": RunConflict,
    "validation_error": ValidationError,
    "malformed_json": ValidationError,
    "payload_too_large": ValidationError,
}


class Client:
    """Start and inspect runs — in-process (given a ``Workflows``) or through a stepstream
    server (given its ``url``); both raise the same errors.

    >>> # client = workflows.client()                      # in-process
    >>> # client = Client(url="http://127.0.0.1:8000")     # a stepstream server
    >>> # run_id = await client.trigger("basic", {"userId": "u1"})
    >>> # log = await client.logs(run_id)
    """

    def __init__(
        self,
        workflows: Engine | HasEngine | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
    ) -> None:
        if (workflows is None) == (url is None):
            raise ValueError("give either a Workflows (in-process) or url= (a stepstream server)")
        self.engine = None if workflows is None else engine_of(workflows)
        self.url = url.rstrip("/") if url else None
        self._http: httpx.AsyncClient | None = None
        self._token = token

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._http is None:
            headers = {"authorization": f"Bearer {self._token}"} if self._token else {}
            self._http = httpx.AsyncClient(base_url=self.url or "", headers=headers, timeout=30)
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"cannot reach stepstream at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                code, message = error["code"], error["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", f"HTTP {response.status_code}: {response.text[:200]}"
            factory = ERRORS.get(code)
            if factory is not None:
                raise factory(message)
            raise StepstreamError(message)
        return response.json()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _local(self) -> Engine:
        assert self.engine is not None
        await self.engine.open()
        return self.engine

    async def trigger(
        self,
        workflow: str,
        body: Any = None,
        *,
        workflow_run_id: str | None = None,
        delay: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Start a run of ``workflow`` with ``body`` as its payload; returns the run id."""
        if self.url is not None:
            params = {"workflowRunId": workflow_run_id, "delay": delay}
            reply = await self._request(
                "POST",
                f"/api/workflows/{quote(workflow, safe='')}",
                content=to_json(body, "the request payload"),
                params={k: v for k, v in params.items() if v is not None},
                headers={"content-type": "application/json", **(headers or {})},
            )
            return str(reply["workflowRunId"])
        engine = await self._local()
        run_id: str = await engine.trigger(
            workflow, body, run_id=workflow_run_id, delay=delay, headers=headers
        )
        return run_id

    async def logs(self, run_id: str) -> dict[str, Any]:
        """The run's log (state, payload, response, error, steps)."""
        if self.url is not None:
            reply: dict[str, Any] = await self._request(
                "GET", f"/api/runs/{quote(run_id, safe='')}"
            )
            return reply
        engine = await self._local()
        run = await engine.backend.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run_log(run)

    async def runs(
        self,
        *,
        state: str | None = None,
        workflow: str | None = None,
        cursor: str | None = None,
        count: int = 100,
    ) -> dict[str, Any]:
        """Runs newest first: ``{"runs": [...], "cursor": ...}`` (pass ``cursor`` for more)."""
        if state is not None and state not in {s.value for s in RunState}:
            raise ValidationError(f"state must be one of {', '.join(s.value for s in RunState)}")
        if self.url is not None:
            params = {"state": state, "workflow": workflow, "cursor": cursor, "count": count}
            reply: dict[str, Any] = await self._request(
                "GET", "/api/runs", params={k: v for k, v in params.items() if v is not None}
            )
            return reply
        engine = await self._local()
        page = await engine.backend.list_runs(
            state=state, workflow=workflow, cursor=cursor, count=count
        )
        return {"runs": [run_log(run) for run in page.runs], "cursor": page.cursor}

    async def cancel(self, run_id: str) -> None:
        """Cancel a running run (``RunConflict`` if it already finished)."""
        if self.url is not None:
            await self._request("POST", f"/api/runs/{quote(run_id, safe='')}/cancel")
            return
        engine = await self._local()
        await engine.cancel(run_id)

    async def notify(
        self, event_id: str, data: Any = None, workflow_run_id: str | None = None
    ) -> int:
        """Deliver ``data`` to runs waiting for ``event_id``; returns how many. Naming the run
        keeps the event for it if it is not waiting yet (lookback)."""
        if self.url is not None:
            params = {"workflowRunId": workflow_run_id} if workflow_run_id else {}
            reply = await self._request(
                "POST",
                f"/api/events/{quote(event_id, safe='')}",
                content=to_json(data, "the event data"),
                params=params,
                headers={"content-type": "application/json"},
            )
            return int(reply["waiters"])
        engine = await self._local()
        woken: int = await engine.notify(event_id, data, workflow_run_id)
        return woken
