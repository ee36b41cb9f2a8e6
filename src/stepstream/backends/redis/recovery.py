"""Finding, resuming and deleting runs on Redis (``RecoveryStore`` in ``backends/base.py``), and
listing them (``list_runs`` is ``find_runs`` by state and workflow).

Each is one Lua script (``lua/find_runs.lua``, ``resume_run.lua``, ``delete_run.lua``,
``list_waiters.lua``). Every combination of state, workflow and label filters has its own
listing index, by seq; the time bounds are found in it by bisection (see ``find_runs.lua``),
so a page costs ``count`` reads plus a few dozen lookups, whatever the filters match.
"""

from __future__ import annotations

from typing import Any

from stepstream.backends.base import ResumeRun, RunFilter, Waiter
from stepstream.backends.redis.runs import RedisRuns, counted, meta_fields, run_record
from stepstream.errors import RunConflict, RunNotFound
from stepstream.records import FAILURE_POSITIONS, RunPage, StepRecord

RESUMED = meta_fields(
    {"result": None, "error": None, "failed_step": None, "phase": "run", "failure_attempts": 0}
)
"""The meta fields a resumed run starts again with."""


class RedisRecovery(RedisRuns):
    """``RecoveryStore`` and ``list_runs`` on ``RedisRuns``."""

    async def list_runs(
        self, *, state: str | None, workflow: str | None, cursor: str | None, count: int
    ) -> RunPage:
        return await self.find_runs(RunFilter(state, workflow), cursor=cursor, count=count)

    async def find_runs(self, where: RunFilter, *, cursor: str | None, count: int) -> RunPage:
        after, before = where.created_after, where.created_before
        next_cursor, found = await self._conn.script(
            "find_runs",
            where.state or "",
            where.workflow or "",
            where.label or "",
            "" if after is None else after,
            "" if before is None else before,
            cursor or "",
            count,
        )
        return RunPage([run_record(fields) for fields in found], next_cursor or None)

    async def resume_run(self, op: ResumeRun) -> None:
        run_id = op.run_id
        reply = await self._conn.script(
            "resume_run",
            run_id,
            FAILURE_POSITIONS,
            *counted({**RESUMED, **meta_fields(_resumed_meta(op))}),
            *self._emit_args(op),
        )
        if reply[0] == "MISSING":
            raise RunNotFound(run_id)
        if reply[0] == "REFUSED":
            raise RunConflict(
                f"run {run_id} is {reply[1]}: only failed or canceled runs can be resumed"
            )

    async def delete_run(self, run_id: str) -> None:
        reply = await self._conn.script("delete_run", run_id, self._conn.stream_key(run_id))
        if reply[0] == "MISSING":
            raise RunNotFound(run_id)
        if reply[0] == "REFUSED":
            raise RunConflict(
                f"run {run_id} is still running: cancel it first, only finished runs are deleted"
            )

    async def list_waiters(self, event_id: str) -> list[Waiter]:
        found = await self._conn.script("list_waiters", event_id)
        waiters = []
        for run_id, position, text in found:
            step = StepRecord.from_json(text)
            waiters.append(Waiter(run_id, int(position), step.name, step.wake_at))
        return sorted(waiters, key=lambda waiter: (waiter.run_id, waiter.position))


def _resumed_meta(op: ResumeRun) -> dict[str, Any]:
    """The meta fields ``op`` sets besides ``RESUMED``: the new run timeout, and the run's
    headers and flow control when it replaces them."""
    meta: dict[str, Any] = {"timeout_at": op.timeout_at}
    if op.headers is not None:
        meta["headers"] = op.headers
    if op.flow is not None:
        meta["flow"] = op.flow.to_dict()
    return meta
