"""How a ``Client``'s calls reach the engine: ``EngineTransport`` calls an ``Engine`` in this
process, ``HTTPTransport`` a server's HTTP API (DESIGN §5), whose error answers it turns back
into the errors the server raised (``errors.error_from_body``). Both return the API's wire
shapes (``server.wire``), so a log reads the same either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Literal, Protocol
from urllib.parse import quote

import httpx

from stepstream.backends.base import RunFilter
from stepstream.errors import (
    DETAIL_HEADER,
    BackendUnavailable,
    CursorUnavailable,
    StepstreamError,
    Unauthorized,
    error_from_body,
)
from stepstream.events import EVENT, ran_to_end
from stepstream.records import RunState
from stepstream.run_end import POLL, RECHECK, go_on, until_finished
from stepstream.server.filters import filter_fields
from stepstream.server.recovery import selection_from
from stepstream.server.schedules import read_schedules, schedule_info
from stepstream.server.wire import (
    Notified,
    RunLog,
    RunPage,
    ScheduleInfo,
    ScheduleList,
    Triggered,
    WaiterInfo,
    Waiters,
    WorkflowNames,
    read_log,
    read_runs,
    workflow_names,
)
from stepstream.workflow import recovery
from stepstream.workflow.engine import Engine, to_json
from stepstream.workflow.flow import FlowControl
from stepstream.workflow.scheduler import Schedules

Bulk = Literal["cancel", "resume"]


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
        labels: list[str],
    ) -> str: ...

    async def logs(self, run_id: str) -> RunLog: ...

    async def finished(self, run_id: str) -> RunLog:
        """The run's log once it has ended, waiting for its ``runFinish`` as long as it takes."""

    async def runs(self, where: RunFilter, *, cursor: str | None, count: int) -> RunPage: ...

    async def cancel(self, run_id: str) -> None: ...

    async def resume(self, run_id: str) -> None: ...

    async def restart(self, run_id: str) -> str: ...

    async def fork(self, run_id: str, from_step: str) -> str: ...

    async def delete(self, run_id: str) -> None: ...

    async def bulk(self, action: Bulk, selection: dict[str, Any]) -> int:
        """Cancel or resume the runs a bulk body (``{"ids"}`` or ``{"filter"}``) selects."""

    async def waiters(self, event_id: str) -> list[WaiterInfo]: ...

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
        labels: list[str],
    ) -> str:
        engine = await self._open()
        started: str = await engine.trigger(
            workflow,
            body,
            run_id=run_id,
            delay=delay,
            headers=headers,
            flow_control=flow_control,
            labels=labels,
        )
        return started

    async def logs(self, run_id: str) -> RunLog:
        return await read_log(await self._open(), run_id)

    async def finished(self, run_id: str) -> RunLog:
        engine = await self._open()
        return await until_finished(
            lambda: read_log(engine, run_id), lambda: self._finished(engine, run_id)
        )

    async def _finished(self, engine: Engine, run_id: str) -> RunLog | None:
        """The log if the run has ended; else ``None`` once its end came, or a while passed."""
        realtime = engine.realtime
        # The cursor is read before the state that decides: a run that ends after it has its
        # runFinish after it.
        latest = None if realtime is None else await engine.backend.latest_id(run_id)
        log = await read_log(engine, run_id)
        if log["workflowState"] != RunState.STARTED:
            return log
        if realtime is None:  # no progress events to wait for: the log is read again
            await asyncio.sleep(POLL)
            return None
        options: dict[str, Any] = {"history": True} if latest is None else {"after": latest}
        with contextlib.suppress(TimeoutError, CursorUnavailable):  # then look again
            async with asyncio.timeout(RECHECK):
                events = realtime.channel(run_id).subscribe([EVENT], **options)
                async with contextlib.aclosing(events):
                    async for message in events:
                        if ran_to_end(run_id, message.event, message.data):
                            break
        return None

    async def runs(self, where: RunFilter, *, cursor: str | None, count: int) -> RunPage:
        return await read_runs(await self._open(), where, cursor=cursor, count=count)

    async def cancel(self, run_id: str) -> None:
        engine = await self._open()
        await engine.cancel(run_id)

    async def resume(self, run_id: str) -> None:
        await recovery.resume(await self._open(), run_id)

    async def restart(self, run_id: str) -> str:
        return await recovery.restart(await self._open(), run_id)

    async def fork(self, run_id: str, from_step: str) -> str:
        return await recovery.fork(await self._open(), run_id, from_step)

    async def delete(self, run_id: str) -> None:
        await recovery.delete(await self._open(), run_id)

    async def bulk(self, action: Bulk, selection: dict[str, Any]) -> int:
        return await recovery.bulk(await self._open(), action, selection_from(selection))

    async def waiters(self, event_id: str) -> list[WaiterInfo]:
        found = await recovery.waiters(await self._open(), event_id)
        return [
            WaiterInfo(
                workflowRunId=w.run_id, stepName=w.step_name, stepId=w.position, deadline=w.deadline
            )
            for w in found
        ]

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
    ``Client.wait``/``result`` stream the run's channel with it: its read timeout should outlast
    the server's 15 s keep-alive, and over an ``ASGITransport``, which buffers a whole answer,
    they learn of the end only when they read the log again (every 30 s).
    """

    def __init__(
        self, url: str, token: str | None = None, *, http: httpx.AsyncClient | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {DETAIL_HEADER: "1"}  # rebuild errors with their constructors' fields
        self._token = token
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._http = http
        self._owned = http is None
        self._streams: httpx.AsyncClient | None = None  # for waits, apart from the calls'
        self.reached = False  # the server has answered a call

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=30)
        return self._http

    def _stream_client(self) -> httpx.AsyncClient:
        """What waits for runs' ends stream with: a client of their own, with no limit on its
        connections (each wait holds one), so a thousand waits neither queue behind one
        another nor take the calls' connections; the caller's own ``http``, if given."""
        if not self._owned:
            return self._client()
        if self._streams is None:
            self._streams = httpx.AsyncClient(
                timeout=httpx.Timeout(10, read=60),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
            )
        return self._streams

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: str | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The JSON answer to ``method path``; the server's error, rebuilt, if it refused."""
        http = self._client()
        sent = {**self._headers, **(headers or {})}
        if body is not None:
            sent["content-type"] = "application/json"
        url = self.url + path
        try:
            response = await http.request(method, url, content=body, params=params, headers=sent)
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
        if response.status_code == 401:
            given = "refused the API token given" if self._token else "wants an API token"
            raise Unauthorized(
                f"{self.url} {given}: the server's own (its STEPSTREAM_TOKEN, or the token= it "
                "was given), as Client(url=..., token=...) or the STEPSTREAM_TOKEN variable"
            )
        if not response.is_success:
            raise error_from_body(answer, response.status_code)
        self.reached = True
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
        labels: list[str],
    ) -> str:
        params: dict[str, Any] = _given(workflowRunId=run_id, delay=delay)
        if labels:
            params["label"] = labels
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

    async def finished(self, run_id: str) -> RunLog:
        return await until_finished(
            lambda: self.logs(run_id), lambda: self._finished(run_id), lambda: self.reached
        )

    async def _finished(self, run_id: str) -> RunLog | None:
        """The log if the run has ended; else ``None`` once its end came, or a while passed."""
        from stepstream.realtime.remote import subscribe_remote

        newest = await self._call(
            "GET", "/api/realtime/history", params={"channel": run_id, "limit": 1}
        )
        cursor = str(newest["messages"][-1]["id"]) if newest["messages"] else "0-0"
        log = await self.logs(run_id)  # read after the cursor: see EngineTransport's
        if log["workflowState"] != RunState.STARTED:
            return log
        with contextlib.suppress(TimeoutError):  # then look again
            async with asyncio.timeout(RECHECK):
                events = subscribe_remote(
                    f"{self.url}/api/realtime",
                    [run_id],
                    token=self._token,
                    after={run_id: cursor},
                    on_gap=go_on,  # trimmed since: the log says how it ended
                    http=self._stream_client(),
                )
                async with contextlib.aclosing(events):
                    async for message in events:
                        if ran_to_end(run_id, message.event, message.data):
                            break
        return None

    async def runs(self, where: RunFilter, *, cursor: str | None, count: int) -> RunPage:
        params = {**filter_fields(where), **_given(cursor=cursor, count=count)}
        page: RunPage = await self._call("GET", "/api/runs", params=params)
        return page

    async def cancel(self, run_id: str) -> None:
        await self._call("POST", f"/api/runs/{quote(run_id, safe='')}/cancel")

    async def resume(self, run_id: str) -> None:
        await self._call("POST", f"/api/runs/{quote(run_id, safe='')}/resume")

    async def restart(self, run_id: str) -> str:
        path = f"/api/runs/{quote(run_id, safe='')}/restart"
        started: Triggered = await self._call("POST", path)
        return started["workflowRunId"]

    async def fork(self, run_id: str, from_step: str) -> str:
        path = f"/api/runs/{quote(run_id, safe='')}/fork"
        started: Triggered = await self._call("POST", path, params={"fromStep": from_step})
        return started["workflowRunId"]

    async def delete(self, run_id: str) -> None:
        await self._call("DELETE", f"/api/runs/{quote(run_id, safe='')}")

    async def bulk(self, action: Bulk, selection: dict[str, Any]) -> int:
        body = to_json(selection, "the selection")
        done: dict[str, int] = await self._call("POST", f"/api/runs/{action}", body=body)
        return int(done["canceled" if action == "cancel" else "resumed"])

    async def waiters(self, event_id: str) -> list[WaiterInfo]:
        path = f"/api/events/{quote(event_id, safe='')}/waiters"
        found: Waiters = await self._call("GET", path)
        return found["waiters"]

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
        """Close the HTTP clients (if this transport made them)."""
        if self._http is not None and self._owned:
            await self._http.aclose()
            self._http = None
        if self._streams is not None:
            await self._streams.aclose()
            self._streams = None


def _given(**params: str | float | None) -> dict[str, str | float]:
    return {name: value for name, value in params.items() if value is not None}
