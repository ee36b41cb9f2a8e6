"""``Client``: trigger runs, read their logs, cancel and notify — the same calls and the same
errors in-process and through a stepstream server.

A ``Client`` validates what it is given and hands each call to a transport
(``transports.py``): ``EngineTransport`` calls an ``Engine`` in this process, ``HTTPTransport``
a server's HTTP API.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from stepstream.auth import TOKEN_ENV
from stepstream.backends.base import RunFilter
from stepstream.errors import RunFailed, ValidationError
from stepstream.records import RUN_STATES, RunState
from stepstream.server.wire import RunLog, RunPage, ScheduleInfo, WaiterInfo, WorkflowNames
from stepstream.transports import EngineTransport, HTTPTransport, Transport
from stepstream.workflow.engine import Engine, HasEngine, engine_of
from stepstream.workflow.flow import FlowControl

__all__ = ["Client", "EngineTransport", "HTTPTransport", "Transport"]


class Client:
    """Start and inspect runs — in-process (given a ``Workflows``) or through a stepstream
    server (given its ``url``); both raise the same errors.

    >>> # client = workflows.client()                      # in-process
    >>> # client = Client(url="http://127.0.0.1:8000")     # a stepstream server
    >>> # run_id = await client.trigger("basic", {"userId": "u1"})
    >>> # log = await client.logs(run_id)

    ``token``: the server's API token; by default ``$STEPSTREAM_TOKEN``, as the CLI's.
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
        if token is not None and not isinstance(token, str):
            raise ValidationError(
                f"token must be the server's API token (a str), got {type(token).__name__}"
            )
        if workflows is not None:
            transport = EngineTransport(engine_of(workflows))
        elif url is not None:
            transport = HTTPTransport(
                url, token if token is not None else os.environ.get(TOKEN_ENV)
            )
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
        labels: Sequence[str] = (),
    ) -> str:
        """Start a run of ``workflow`` with ``body`` as its payload; returns the run id.
        ``delay``: seconds before it starts. ``flow_control``: this run's own (DESIGN §12),
        instead of the workflow's. ``labels``: names to find the run by (``runs(label=)``)."""
        if isinstance(labels, str):
            raise ValidationError(f"labels must be a list of strings, got {labels!r:.60}")
        return await self.transport.trigger(
            workflow,
            body,
            run_id=workflow_run_id,
            delay=delay,
            headers=headers,
            flow_control=flow_control,
            labels=list(labels),
        )

    async def logs(self, run_id: str) -> RunLog:
        """The run's log (state, payload, response, error, steps)."""
        return await self.transport.logs(run_id)

    async def wait(self, run_id: str) -> RunLog:
        """The run's log once it has ended, however it ended: waits for its ``runFinish``
        live (no polling). ``RunNotFound`` for no such run. To give up after a while, wrap it
        in ``asyncio.timeout(seconds)`` (the run goes on)."""
        return await self.transport.finished(run_id)

    async def result(self, run_id: str) -> Any:
        """What the run's workflow returned, once it has ended; ``RunFailed`` (with its
        ``state`` and ``error``) if it failed or was canceled. Waits as ``wait`` does.

        >>> # run_id = await client.trigger("order", {"id": 7})
        >>> # async with asyncio.timeout(60):
        >>> #     receipt = await client.result(run_id)
        """
        log = await self.wait(run_id)
        if log["workflowState"] != RunState.SUCCESS:
            raise RunFailed(run_id, log["workflowState"], log["error"])
        return log["workflowRunResponse"]

    async def runs(
        self,
        *,
        state: str | None = None,
        workflow: str | None = None,
        label: str | None = None,
        created_after: int | None = None,
        created_before: int | None = None,
        cursor: str | None = None,
        count: int = 100,
    ) -> RunPage:
        """Runs newest first: ``{"runs": [...], "cursor": ...}`` (pass ``cursor`` for more);
        each filter given narrows them (times: epoch ms, exclusive). Entries carry no payload,
        result or steps: ``logs(run_id)`` has those."""
        if state is not None and state not in RUN_STATES:
            raise ValidationError(f"state must be one of {', '.join(RUN_STATES)}")
        where = RunFilter(state, workflow, label, created_after, created_before)
        return await self.transport.runs(where, cursor=cursor, count=count)

    async def cancel(self, run_id: str) -> None:
        """Cancel a running run (``RunConflict`` if it already finished)."""
        await self.transport.cancel(run_id)

    async def resume(self, run_id: str) -> None:
        """Continue a failed or canceled run in place: completed steps are kept, the failed
        step runs again with fresh retries (``RunConflict`` for any other run)."""
        await self.transport.resume(run_id)

    async def restart(self, run_id: str) -> str:
        """Start a new run with the same workflow, payload and labels; its id."""
        return await self.transport.restart(run_id)

    async def fork(self, run_id: str, from_step: str) -> str:
        """Start a new run whose steps before the first one named ``from_step`` are copied
        from ``run_id`` rather than executed; its id."""
        return await self.transport.fork(run_id, from_step)

    async def delete(self, run_id: str) -> None:
        """Delete a finished run and its channel history (``RunConflict`` while it runs)."""
        await self.transport.delete(run_id)

    async def cancel_many(self, ids: Sequence[str] | None = None, **where: str | int | None) -> int:
        """Cancel the running runs with these ``ids``, or those matching the filters
        (``workflow=``, ``label=``, ``createdAfter=``, ``createdBefore=``; at least one), at
        most 1000 per call; how many it canceled."""
        return await self.transport.bulk("cancel", _selection(ids, where))

    async def resume_many(self, ids: Sequence[str] | None = None, **where: str | int | None) -> int:
        """Resume the failed or canceled runs with these ``ids``, or those matching the
        filters (``state=``, ``workflow=``, ``label=``, ``createdAfter=``,
        ``createdBefore=``; at least one), at most 1000 per call; how many it resumed."""
        return await self.transport.bulk("resume", _selection(ids, where))

    async def waiters(self, event_id: str) -> list[WaiterInfo]:
        """The steps waiting for ``event_id`` now: ``[{"workflowRunId", "stepName",
        "stepId", "deadline"}]``."""
        return await self.transport.waiters(event_id)

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


def _selection(ids: Sequence[str] | None, where: dict[str, str | int | None]) -> dict[str, Any]:
    if ids is not None:
        if isinstance(ids, str):
            raise ValidationError("ids must be a list of run ids, not one string")
        return {"ids": list(ids)}
    return {"filter": {name: value for name, value in where.items() if value is not None}}
