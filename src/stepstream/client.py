"""``Client``: trigger runs, read their logs, cancel and notify — the same calls and the same
errors in-process and through a stepstream server.

A ``Client`` validates what it is given and hands each call to a transport: ``EngineTransport``
calls an ``Engine`` in this process, ``HTTPTransport`` a server's HTTP API (DESIGN §5), whose
error answers it turns back into the errors the server raised (``errors.error_from_body``).
Both return the API's wire shapes (``server.wire``), so a log reads the same either way.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from stepstream.errors import (
    DETAIL_HEADER,
    BackendUnavailable,
    StepstreamError,
    ValidationError,
    error_from_body,
)
from stepstream.records import RUN_STATES
from stepstream.server.schedules import read_schedules, schedule_info
from stepstream.server.wire import (
    Notified,
    RunLog,
    RunPage,
    ScheduleInfo,
    ScheduleList,
    Triggered,
    WorkflowNames,
    read_log,
    read_runs,
    workflow_names,
)
from stepstream.workflow.engine import Engine, HasEngine, engine_of, to_json
from stepstream.workflow.flow import FlowControl
from stepstream.workflow.scheduler import Schedules


class Transport(Protocol):
    """How a ``Client``'s calls reach the engine. Errors are stepstream errors, whatever the
    way: a transport never lets a driver's or an HTTP library's exception through."""

    async def trigger(
        self,
        workflow: str,
        body: Any,
        *,
        run_id: str | None,
        delay: float | None,
        headers: dict[str, str] | None,
        flow_control: FlowControl | None,
    ) -> str: ...

    async def logs(self, run_id: str) -> RunLog: ...

    async def runs(
        self, *, state: str | None, workflow: str | None, cursor: str | None, count: int
    ) -> RunPage: ...

    async def cancel(self, run_id: str) -> None: ...

    async def notify(self, event_id: str, data: Any, run_id: str | None) -> int: ...

    async def workflows(self) -> WorkflowNames: ...

    async def pause_workflow(self, name: str, paused: bool) -> None: ...

    async def create_schedule(self, fields: dict[str, Any]) -> ScheduleInfo: ...

    async def schedules(self) -> ScheduleList: ...

    async def schedule(self, schedule_id: str, action: str | None = None) -> ScheduleInfo:
        """The schedule; ``action`` ``pause`` or ``resume`` first changes it."""

    async def delete_schedule(self, schedule_id: str) -> None: ...

    async def aclose(self) -> None: ...


class EngineTransport:
    """Calls an ``Engine`` of this process (opening its store on first use)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _open(self) -> Engine:
        await self.engine.open()
        return self.engine

    async def trigger(
        self,
        workflow: str,
        body: Any,
        *,
        run_id: str | None,
        delay: float | None,
        headers: dict[str, str] | None,
        flow_control: FlowControl | None,
    ) -> str:
        engine = await self._open()
        started: str = await engine.trigger(
            workflow, body, run_id=run_id, delay=delay, headers=headers, flow_control=flow_control
        )
        return started

    async def logs(self, run_id: str) -> RunLog:
        return await read_log(await self._open(), run_id)

    async def runs(
        self, *, state: str | None, workflow: str | None, cursor: str | None, count: int
    ) -> RunPage:
        engine = await self._open()
        return await read_runs(engine, state=state, workflow=workflow, cursor=cursor, count=count)

    async def cancel(self, run_id: str) -> None:
        engine = await self._open()
        await engine.cancel(run_id)

    async def notify(self, event_id: str, data: Any, run_id: str | None) -> int:
        engine = await self._open()
        woken: int = await engine.notify(event_id, data, run_id)
        return woken

    async def workflows(self) -> WorkflowNames:
        engine = await self._open()
        await engine.read_paused()
        return workflow_names(engine)

    async def pause_workflow(self, name: str, paused: bool) -> None:
        engine = await self._open()
        await (engine.pause(name) if paused else engine.resume(name))

    async def create_schedule(self, fields: dict[str, Any]) -> ScheduleInfo:
        engine = await self._open()
        record = await Schedules(engine).create(
            fields["id"], fields["workflow"], fields["cron"], fields["timezone"], fields["payload"]
        )
        return schedule_info(record, engine.clock())

    async def schedules(self) -> ScheduleList:
        return await read_schedules(await self._open())

    async def schedule(self, schedule_id: str, action: str | None = None) -> ScheduleInfo:
        engine = await self._open()
        schedules = Schedules(engine)
        if action == "pause":
            record = await schedules.pause(schedule_id)
        elif action == "resume":
            record = await schedules.resume(schedule_id)
        else:
            record = await schedules.get(schedule_id)
        return schedule_info(record, engine.clock())

    async def delete_schedule(self, schedule_id: str) -> None:
        await Schedules(await self._open()).delete(schedule_id)

    async def aclose(self) -> None:
        """Nothing to release: the engine belongs to its ``Workflows``."""


class HTTPTransport:
    """Calls a stepstream server's HTTP API at ``url`` (``token``: its API token).

    ``http``: an ``httpx.AsyncClient`` of your own (proxies, TLS settings, an
    ``httpx.ASGITransport`` in tests); by default one is made on first use, 30 s timeouts.
    """

    def __init__(
        self, url: str, token: str | None = None, *, http: httpx.AsyncClient | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {DETAIL_HEADER: "1"}  # rebuild errors with their constructors' fields
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._http = http
        self._owned = http is None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: str | None = None,
        params: dict[str, str | float] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The JSON answer to ``method path``; the server's error, rebuilt, if it refused."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=30)
        sent = {**self._headers, **(headers or {})}
        if body is not None:
            sent["content-type"] = "application/json"
        url = self.url + path
        try:
            response = await self._http.request(
                method, url, content=body, params=params, headers=sent
            )
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"cannot reach stepstream at {self.url}: {exc}") from exc
        try:
            answer = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            answer = response.text
            if response.is_success:
                raise StepstreamError(
                    f"{url} answered {response.status_code} without JSON: {answer[:200]}"
                ) from None
        if not response.is_success:
            raise error_from_body(answer, response.status_code)
        return answer

    async def trigger(
        self,
        workflow: str,
        body: Any,
        *,
        run_id: str | None,
        delay: float | None,
        headers: dict[str, str] | None,
        flow_control: FlowControl | None,
    ) -> str:
        params = _given(workflowRunId=run_id, delay=delay)
        if flow_control is not None:  # a key function is applied here, to the payload sent
            limits = flow_control.limits(body, workflow)
            params.update(
                _given(
                    flowControlKey=limits.key,
                    parallelism=limits.parallelism,
                    rate=limits.rate,
                    period=limits.period_ms / 1000,
                )
            )
        triggered: Triggered = await self._call(
            "POST",
            f"/api/workflows/{quote(workflow, safe='')}",
            body=to_json(body, "the request payload"),
            params=params,
            headers=headers,
        )
        return triggered["workflowRunId"]

    async def logs(self, run_id: str) -> RunLog:
        log: RunLog = await self._call("GET", f"/api/runs/{quote(run_id, safe='')}")
        return log

    async def runs(
        self, *, state: str | None, workflow: str | None, cursor: str | None, count: int
    ) -> RunPage:
        params = _given(state=state, workflow=workflow, cursor=cursor, count=count)
        page: RunPage = await self._call("GET", "/api/runs", params=params)
        return page

    async def cancel(self, run_id: str) -> None:
        await self._call("POST", f"/api/runs/{quote(run_id, safe='')}/cancel")

    async def notify(self, event_id: str, data: Any, run_id: str | None) -> int:
        notified: Notified = await self._call(
            "POST",
            f"/api/events/{quote(event_id, safe='')}",
            body=to_json(data, "the event data"),
            params=_given(workflowRunId=run_id),
        )
        return int(notified["waiters"])

    async def workflows(self) -> WorkflowNames:
        names: WorkflowNames = await self._call("GET", "/api/workflows")
        return names

    async def pause_workflow(self, name: str, paused: bool) -> None:
        action = "pause" if paused else "resume"
        await self._call("POST", f"/api/workflows/{quote(name, safe='')}/{action}")

    async def create_schedule(self, fields: dict[str, Any]) -> ScheduleInfo:
        body = to_json(fields, "the schedule")
        created: ScheduleInfo = await self._call("POST", "/api/schedules", body=body)
        return created

    async def schedules(self) -> ScheduleList:
        listed: ScheduleList = await self._call("GET", "/api/schedules")
        return listed

    async def schedule(self, schedule_id: str, action: str | None = None) -> ScheduleInfo:
        path = f"/api/schedules/{quote(schedule_id, safe='')}"
        if action is None:
            found: ScheduleInfo = await self._call("GET", path)
            return found
        changed: ScheduleInfo = await self._call("POST", f"{path}/{action}")
        return changed

    async def delete_schedule(self, schedule_id: str) -> None:
        await self._call("DELETE", f"/api/schedules/{quote(schedule_id, safe='')}")

    async def aclose(self) -> None:
        """Close the HTTP client (if this transport made it)."""
        if self._http is not None and self._owned:
            await self._http.aclose()
            self._http = None


def _given(**params: str | float | None) -> dict[str, str | float]:
    return {name: value for name, value in params.items() if value is not None}


class Client:
    """Start and inspect runs — in-process (given a ``Workflows``) or through a stepstream
    server (given its ``url``); both raise the same errors.

    >>> # client = workflows.client()                      # in-process
    >>> # client = Client(url="http://127.0.0.1:8000")     # a stepstream server
    >>> # run_id = await client.trigger("basic", {"userId": "u1"})
    >>> # log = await client.logs(run_id)

    ``transport=``: any ``Transport`` (e.g. ``HTTPTransport(url, http=my_httpx_client)``).
    """

    def __init__(
        self,
        workflows: Engine | HasEngine | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        transport: Transport | None = None,
    ) -> None:
        if [workflows, url, transport].count(None) != 2:
            raise ValueError(
                "give one of: a Workflows (in-process), url= (a stepstream server), transport="
            )
        if workflows is not None:
            transport = EngineTransport(engine_of(workflows))
        elif url is not None:
            transport = HTTPTransport(url, token)
        assert transport is not None
        self.transport = transport

    async def trigger(
        self,
        workflow: str,
        body: Any = None,
        *,
        workflow_run_id: str | None = None,
        delay: float | None = None,
        headers: dict[str, str] | None = None,
        flow_control: FlowControl | None = None,
    ) -> str:
        """Start a run of ``workflow`` with ``body`` as its payload; returns the run id.
        ``delay``: seconds before it starts. ``flow_control``: this run's own (DESIGN §12),
        instead of the workflow's."""
        return await self.transport.trigger(
            workflow,
            body,
            run_id=workflow_run_id,
            delay=delay,
            headers=headers,
            flow_control=flow_control,
        )

    async def logs(self, run_id: str) -> RunLog:
        """The run's log (state, payload, response, error, steps)."""
        return await self.transport.logs(run_id)

    async def runs(
        self,
        *,
        state: str | None = None,
        workflow: str | None = None,
        cursor: str | None = None,
        count: int = 100,
    ) -> RunPage:
        """Runs newest first: ``{"runs": [...], "cursor": ...}`` (pass ``cursor`` for more)."""
        if state is not None and state not in RUN_STATES:
            raise ValidationError(f"state must be one of {', '.join(RUN_STATES)}")
        return await self.transport.runs(state=state, workflow=workflow, cursor=cursor, count=count)

    async def cancel(self, run_id: str) -> None:
        """Cancel a running run (``RunConflict`` if it already finished)."""
        await self.transport.cancel(run_id)

    async def notify(
        self, event_id: str, data: Any = None, workflow_run_id: str | None = None
    ) -> int:
        """Deliver ``data`` to runs waiting for ``event_id``; returns how many. Naming the run
        keeps the event for it if it is not waiting yet (lookback)."""
        return await self.transport.notify(event_id, data, workflow_run_id)

    async def workflows(self) -> WorkflowNames:
        """The registered workflows, and which of them are paused:
        ``{"workflows": [...], "paused": [...]}``."""
        return await self.transport.workflows()

    async def pause_workflow(self, name: str) -> None:
        """Stop executing ``name``'s runs: triggers are still accepted and stored, no worker
        claims them, and a run executing now stops before its next step."""
        await self.transport.pause_workflow(name, True)

    async def resume_workflow(self, name: str) -> None:
        """Execute ``name``'s runs again (those due meanwhile at once)."""
        await self.transport.pause_workflow(name, False)

    async def create_schedule(
        self,
        schedule_id: str,
        workflow: str,
        cron: str,
        *,
        timezone: str = "UTC",
        payload: Any = None,
    ) -> ScheduleInfo:
        """Start ``workflow`` with ``payload`` on each tick of ``cron`` (5 fields, or 6 with
        leading seconds) read in ``timezone``. ``RunConflict`` if ``schedule_id`` is taken,
        ``ValidationError`` for a bad id, cron or time zone.

        >>> # await client.create_schedule("nightly", "report", "0 2 * * *", timezone="UTC")
        """
        fields = {
            "id": schedule_id,
            "workflow": workflow,
            "cron": cron,
            "timezone": timezone,
            "payload": payload,
        }
        return await self.transport.create_schedule(fields)

    async def schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by id, with its ``nextRunAt`` and ``lastRunId``."""
        return (await self.transport.schedules())["schedules"]

    async def schedule(self, schedule_id: str) -> ScheduleInfo:
        """One schedule (``RouteNotFound`` if there is none)."""
        return await self.transport.schedule(schedule_id)

    async def pause_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Start no more runs until resumed."""
        return await self.transport.schedule(schedule_id, "pause")

    async def resume_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Start runs again from the next tick (the ticks skipped while paused stay so)."""
        return await self.transport.schedule(schedule_id, "resume")

    async def delete_schedule(self, schedule_id: str) -> None:
        """Remove a schedule. One a workflow declares comes back when a worker starts."""
        await self.transport.delete_schedule(schedule_id)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
