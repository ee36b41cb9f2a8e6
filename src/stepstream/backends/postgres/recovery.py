"""Finding, resuming and deleting runs in the Postgres backend (``RecoveryStore`` in
``backends/base.py``), and listing them (``list_runs`` is ``find_runs`` by state and workflow).

A listing is one query, newest first by the run's ``seq``, with every filter exact, which the
planner serves from an index: ``runs_by_state``, ``runs_by_workflow`` and the like, or with a
label that label's rows of ``run_labels`` (its primary key). A time bound is either a range of
``runs_created`` (a narrow span: its runs, sorted) or a filter on the scan of the filter's own
index, which then skips the runs created outside the span; the planner picks by the span's
size. Resuming and deleting are one call each of their function in
``migrations/005_recovery.sql`` (resuming: its overload in ``008_dlq_overrides.sql``).
"""

from __future__ import annotations

from typing import Any

from stepstream.backends.base import ResumeRun, RunFilter, Waiter
from stepstream.backends.postgres.connection import Database
from stepstream.backends.postgres.runs import emit_args, run_record
from stepstream.errors import RunNotFound
from stepstream.records import RunPage, StepRecord, dumps

ALL_RUNS = "runs r"
LABELLED_RUNS = "run_labels l JOIN runs r ON r.seq = l.seq"

# Each waiter's run read by id, by a scalar subquery: a join may be planned as a scan of every
# run (before PostgreSQL has statistics, see migrations/012_lock_by_id.sql).
WAITERS = """
SELECT w.run_id, w.position, s.data FROM waits w
JOIN steps s ON s.run_id = w.run_id AND s.position = w.position
WHERE w.event_id = $1 AND s.state = 'STEP_PROGRESS' AND NOT s.resolved
    AND (SELECT r.state FROM runs r WHERE r.id = w.run_id) = 'RUN_STARTED'
ORDER BY w.run_id, w.position
"""


class PostgresRecovery:
    """``RecoveryStore`` and ``list_runs`` on the pool of ``_db``."""

    _db: Database

    async def list_runs(
        self, *, state: str | None, workflow: str | None, cursor: str | None, count: int
    ) -> RunPage:
        return await self.find_runs(RunFilter(state, workflow), cursor=cursor, count=count)

    async def find_runs(self, where: RunFilter, *, cursor: str | None, count: int) -> RunPage:
        if "\x00" in (where.state or "") + (where.workflow or "") + (where.label or ""):
            return RunPage([], None)  # PostgreSQL text has no NUL: no run can match
        try:
            before = None if cursor is None else int(cursor)
        except ValueError:
            return RunPage([], None)
        sql, args = _listing(where, before, count + 1)
        rows = await self._db.fetch(sql, *args, read=True)
        more = len(rows) > count
        rows = rows[:count]
        next_cursor = str(rows[-1]["seq"]) if more and rows else None
        return RunPage([run_record(row) for row in rows], next_cursor)

    async def resume_run(self, op: ResumeRun) -> None:
        if "\x00" in op.run_id:
            raise RunNotFound(op.run_id)
        await self._db.fetch(
            "SELECT ss_resume_run($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            op.run_id,
            op.timeout_at,
            None if op.headers is None else dumps(op.headers),
            None if op.flow is None else dumps(op.flow.to_dict()),
            *emit_args(op),
        )

    async def delete_run(self, run_id: str) -> None:
        if "\x00" in run_id:
            raise RunNotFound(run_id)
        await self._db.fetch("SELECT ss_delete_run($1)", run_id)

    async def list_waiters(self, event_id: str) -> list[Waiter]:
        if "\x00" in event_id:
            return []
        waiters = []
        for run_id, position, data in await self._db.fetch(WAITERS, event_id, read=True):
            step = StepRecord.from_json(data)
            waiters.append(Waiter(run_id, position, step.name, step.wake_at))
        return waiters


def _listing(where: RunFilter, before: int | None, limit: int) -> tuple[str, list[Any]]:
    """The query of one page of runs matching ``where`` with ``seq`` below ``before``, newest
    first, and its arguments."""
    source, seq = (ALL_RUNS, "r.seq") if where.label is None else (LABELLED_RUNS, "l.seq")
    args: list[Any] = []
    match: list[str] = []
    for column, operator, value in (
        ("l.label", "=", where.label),
        ("r.state", "=", where.state),
        ("r.workflow", "=", where.workflow),
        ("r.created_at", ">", where.created_after),
        ("r.created_at", "<", where.created_before),
        (seq, "<", before),
    ):
        if value is not None:
            args.append(value)
            match.append(f"{column} {operator} ${len(args)}")
    conditions = f"WHERE {' AND '.join(match)}" if match else ""
    args.append(limit)
    return f"SELECT r.* FROM {source} {conditions} ORDER BY {seq} DESC LIMIT ${len(args)}", args
