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
from stepstream.server.wire import Notified, RunLog, RunPage, Triggered, read_log, read_runs
from stepstream.workflow.engine import Engine, HasEngine, engine_of, to_json
from stepstream.workflow.flow import FlowControl


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
