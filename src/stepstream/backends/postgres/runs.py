"""The workflow half of the Postgres backend: each operation is one call of its function in
``migrations/003_runs.sql`` (redefined later: ``ss_save_steps`` in ``004_flow_control.sql``,
``ss_create_run`` in ``005_recovery.sql``; the usual save of one step is ``ss_save_step`` in
``011_save_one_step.sql``; the latest of the saves, the fence and ``ss_renew`` are in
``012_lock_by_id.sql``; leases are renewed by ``ss_heartbeat`` of
``013_heartbeat_never_waits.sql`` first), which also appends the events reporting it
(``ss_emit``), so a state change and its events commit together. Runs due now NOTIFY the wake
topic at commit. Step saves made while others are in flight are sent together (``batch.py``).
Listing runs is in ``recovery.py``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import asyncpg

from stepstream.backends.base import (
    CancelRun,
    Claim,
    CreateRun,
    FinishRun,
    Notify,
    ReleaseRun,
    Reported,
    SaveSteps,
    WaitEvent,
)
from stepstream.backends.postgres.batch import SaveBatcher
from stepstream.backends.postgres.connection import Database
from stepstream.backends.postgres.live import Listener
from stepstream.backends.postgres.realtime import expire_ms
from stepstream.errors import RunNotFound
from stepstream.records import (
    FlowLimits,
    Lease,
    RunRecord,
    RunState,
    StepRecord,
    StepState,
    dumps,
)

STEP_COLUMNS = "run_id, position, state, resolved, out, finished_at, data"


def _text(value: str | None) -> str | None:
    """Free text as PostgreSQL stores it: it has no NUL character (an error message might)."""
    return None if value is None else value.replace("\x00", "\ufffd")


def emit_args(op: Reported) -> tuple[Any, ...]:
    emits = op.emits
    return (
        [e.channel for e in emits],
        [e.event for e in emits],
        [e.raw for e in emits],
        op.policy.max_length,
        expire_ms(op.policy),
    )


STEP_VALUES = 6  # the columns of step_values()


def step_values(step: StepRecord) -> tuple[Any, ...]:
    """A step as its columns (after its run id): position, state, resolved, out, finished_at,
    data."""
    return (
        step.position,
        step.state.value,
        step.resolved,
        step.out,
        step.finished_at,
        step.to_json(),
    )


def _steps(steps: Iterable[StepRecord]) -> tuple[list[Any], ...]:
    """Steps as one array per column, in ``step_values``' order."""
    rows = [step_values(step) for step in steps]
    return tuple([row[column] for row in rows] for column in range(STEP_VALUES))


def _parent_out(state: RunState, result: str | None, error: str | None) -> str:
    return dumps({"state": state.value, "result": result, "error": error})


class PostgresRuns:
    """``RunStore`` on the pool of ``_db``; wake-ups by ``_listener``."""

    _db: Database
    _listener: Listener
    _saves: SaveBatcher
    _renewing: asyncio.Semaphore  # the renewals that may wait for a row lock at once

    async def create_run(self, op: CreateRun) -> None:
        run = op.run
        await self._db.fetch(
            "SELECT ss_create_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, "
            "$15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, "
            "$31)",
            run.id,
            run.workflow,
            run.state.value,
            run.created_at,
            run.completed_at,
            run.due_at,
            run.parent,
            run.parent_position,
            run.payload,
            dumps(run.headers),
            run.result,
            _text(run.error),
            run.timeout_at,
            run.phase,
            run.failure_attempts,
            _text(run.failed_step),
            None if run.flow is None else dumps(run.flow.to_dict()),
            run.labels,
            run.restarted_from,
            run.forked_from,
            *_steps(run.steps),
            *emit_args(op),
        )

    async def get_run(self, run_id: str) -> RunRecord | None:
        if "\x00" in run_id:
            return None  # PostgreSQL text has no NUL: no such run can exist
        rows = await self._db.fetch("SELECT * FROM runs WHERE id = $1", run_id, read=True)
        if not rows:
            return None
        run = run_record(rows[0])
        run.steps = (await self._steps_of([run_id])).get(run_id, [])
        return run

    async def claim_runs(self, op: Claim) -> list[RunRecord]:
        if not op.workflows or op.limit <= 0:
            return []
        rows = await self._db.fetch(
            "SELECT * FROM ss_claim($1, $2, $3, $4, $5)",
            op.owner,
            op.lease_ms,
            op.limit,
            list(op.workflows),
            list(op.exclude),
        )
        runs = sorted((run_record(row) for row in rows), key=lambda run: (run.due_at or 0, run.id))
        if runs:
            steps = await self._steps_of([run.id for run in runs])
            for run in runs:
                run.steps = steps.get(run.id, [])
        return runs

    async def renew_leases(self, leases: list[Lease], lease_ms: int) -> list[str]:
        """All leases at once, never waiting for a row lock (``renew_leases_now``), then each
        run another transaction held meanwhile on its own (``ss_renew``), waiting for that
        change: a renewal that locked several runs and waited for one could close a lock cycle
        with a save that locks its own run and then another (migration 13). A third of the
        pool's connections at most wait at once, across all calls: a group save holds up to
        ``MAX_BATCH`` runs, and a renewal of each at once would take the pool from every other
        call, while one at a time would keep each run waiting for the locks of those before
        it."""
        renewed, changing = await self._heartbeat(leases, lease_ms, urgent=False)
        answers = await asyncio.gather(
            *(self._renew_one(lease, lease_ms) for lease in changing), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer  # the first failure; the others have ended too
            renewed += answer
        return renewed

    async def renew_leases_now(
        self, leases: list[Lease], lease_ms: int
    ) -> tuple[list[str], list[Lease]]:
        """A worker's heartbeat, sent on the connection kept for urgent calls: never behind
        the calls that wait for row locks, however many they are."""
        return await self._heartbeat(leases, lease_ms, urgent=True)

    async def _heartbeat(
        self, leases: list[Lease], lease_ms: int, urgent: bool
    ) -> tuple[list[str], list[Lease]]:
        if not leases:
            return [], []
        rows = await self._db.fetch(
            "SELECT * FROM ss_heartbeat($1, $2, $3, $4)", *_claims(leases), lease_ms, urgent=urgent
        )
        renewed = [run_id for run_id, busy in rows if not busy]
        busy = {run_id for run_id, busy in rows if busy}
        return renewed, list(dict.fromkeys(lease for lease in leases if lease.run_id in busy))

    async def _renew_one(self, lease: Lease, lease_ms: int) -> list[str]:
        async with self._renewing:
            rows = await self._db.fetch(
                "SELECT * FROM ss_renew($1, $2, $3, $4)", *_claims([lease]), lease_ms
            )
        return [row[0] for row in rows]

    async def save_steps(self, op: SaveSteps) -> int:
        if op.release is None:
            return await self._saves.save(op)
        return await self._save_steps(op)

    async def _save_steps(self, op: SaveSteps) -> int:
        own = all(emit.channel == op.lease.run_id for emit in op.emits)
        if op.release is None and len(op.steps) == 1 and own:
            await self._save_step(op)
            return 0
        return await self._save_arrays(op)

    async def _save_step(self, op: SaveSteps) -> None:
        """The usual save (one step, reported on its run's channel, no slot to give back) as
        values: the driver encodes a one-element array at several times a value's cost."""
        lease, step = op.lease, op.steps[0]
        await self._db.fetch(
            "SELECT ss_save_step($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            lease.run_id,
            lease.owner,
            lease.epoch,
            *step_values(step),
            [emit.event for emit in op.emits],
            [emit.raw for emit in op.emits],
            op.policy.max_length,
            expire_ms(op.policy),
        )

    async def _save_arrays(self, op: SaveSteps) -> int:
        """Any save: its steps and events as arrays, and the slot it gives back; how many runs
        waiting for that slot it woke."""
        lease, slot = op.lease, op.release
        woken: int = await self._db.value(
            "SELECT ss_save_steps($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, "
            "$15, $16, $17)",
            lease.run_id,
            lease.owner,
            lease.epoch,
            *_steps(op.steps),
            *emit_args(op),
            *((None, None, None) if slot is None else (slot.key, slot.run_id, slot.position)),
        )
        return woken

    async def release_run(self, op: ReleaseRun) -> None:
        lease, patch = op.lease, op.patch
        await self._db.fetch(
            "SELECT ss_release_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, "
            "$15)",
            lease.run_id,
            lease.owner,
            lease.epoch,
            op.due_at,
            op.hold,
            list(patch),
            patch.get("phase"),
            _text(patch.get("error")),
            patch.get("failure_attempts"),
            _text(patch.get("failed_step")),
            *emit_args(op),
        )

    async def finish_run(self, op: FinishRun) -> None:
        lease = op.lease
        await self._db.fetch(
            "SELECT ss_finish_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            lease.run_id,
            lease.owner,
            lease.epoch,
            op.state.value,
            op.result,
            _text(op.error),
            op.at,
            _parent_out(op.state, op.result, op.error),
            *emit_args(op),
        )

    async def wait_event(self, op: WaitEvent) -> str | None:
        lease, step = op.lease, op.step
        assert step.event_id is not None
        kept: str | None = await self._db.value(
            "SELECT ss_wait_event($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            lease.run_id,
            lease.owner,
            lease.epoch,
            step.event_id,
            step.position,
            step.state.value,
            step.finished_at,
            step.to_json(),
            *emit_args(op),
        )
        return kept

    async def notify(self, op: Notify) -> int:
        if op.run_id is not None and "\x00" in op.run_id:
            raise RunNotFound(op.run_id)
        woken: int = await self._db.value(
            "SELECT ss_notify($1, $2, $3)", op.event_id, op.raw, op.run_id
        )
        return woken

    async def cancel_run(self, op: CancelRun) -> None:
        if "\x00" in op.run_id:
            raise RunNotFound(op.run_id)
        await self._db.fetch(
            "SELECT ss_cancel_run($1, $2, $3, $4, $5, $6, $7, $8)",
            op.run_id,
            op.at,
            _parent_out(RunState.CANCELED, None, "canceled"),
            *emit_args(op),
        )

    async def wake_workers(self) -> None:
        await self._db.fetch("SELECT ss_wake()")

    async def listen_wakeups(self, callback: Callable[[], None]) -> None:
        await self._listener.wake_on(callback)

    def wakeups_active(self) -> bool:
        return self._listener.waking

    async def _steps_of(self, run_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        rows = await self._db.fetch(
            f"SELECT {STEP_COLUMNS} FROM steps WHERE run_id = ANY ($1) ORDER BY run_id, position",
            list(run_ids),
            read=True,
        )
        steps: dict[str, list[StepRecord]] = {}
        for row in rows:
            steps.setdefault(row[0], []).append(_step(row))
        return steps


def _step(row: asyncpg.Record) -> StepRecord:
    _, _, state, resolved, out, finished_at, data = row
    step = StepRecord.from_json(data)
    # The columns win: storage changes them (resolve, cancel) without rewriting the JSON.
    step.state, step.resolved, step.out, step.finished_at = (
        StepState(state),
        resolved,
        out,
        finished_at,
    )
    return step


def run_record(row: asyncpg.Record) -> RunRecord:
    return RunRecord(
        id=row["id"],
        workflow=row["workflow"],
        state=RunState(row["state"]),
        created_at=row["created_at"],
        payload=row["payload"],
        headers=json.loads(row["headers"]),
        completed_at=row["completed_at"],
        result=row["result"],
        error=row["error"],
        due_at=row["due_at"],
        timeout_at=row["timeout_at"],
        parent=row["parent"],
        parent_position=row["parent_position"],
        phase=row["phase"],
        failure_attempts=row["failure_attempts"],
        failed_step=row["failed_step"],
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
        epoch=row["epoch"],
        flow=None if row["flow"] is None else FlowLimits.from_dict(json.loads(row["flow"])),
        labels=list(row["labels"]),
        restarted_from=row["restarted_from"],
        forked_from=row["forked_from"],
        takeovers=row.get("takeovers", 0),
    )


def _claims(leases: list[Lease]) -> tuple[list[str], list[str], list[int]]:
    """The run ids, owners and epochs of ``leases``: the arrays a lease renewal takes."""
    return (
        [lease.run_id for lease in leases],
        [lease.owner for lease in leases],
        [lease.epoch for lease in leases],
    )
