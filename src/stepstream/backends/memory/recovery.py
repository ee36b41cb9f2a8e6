"""Finding, resuming and deleting runs in the in-memory backend (see ``RecoveryStore`` in
``backends/base.py``); each operation is one turn under the store's lock."""

from __future__ import annotations

from bisect import bisect_left

from stepstream.backends.base import ResumeRun, RunFilter, Waiter
from stepstream.backends.memory.store import Store, cleaned
from stepstream.errors import RunConflict
from stepstream.records import FAILURE_POSITIONS, RunPage, RunRecord, RunState, StepState


class MemoryRecovery:
    """``RecoveryStore`` on the shared ``Store``."""

    _store: Store

    async def find_runs(self, where: RunFilter, *, cursor: str | None, count: int) -> RunPage:
        store = self._store
        with store.lock:
            if where.label is None:
                seqs = store.index.get((where.state, where.workflow), [])
            else:
                seqs = store.labels.get(where.label, [])
            high = len(seqs) if cursor is None else bisect_left(seqs, int(cursor))
            found: list[int] = []
            while high > 0 and len(found) <= count:
                high -= 1
                if _matches(store.runs[store.by_seq[seqs[high]]].record, where):
                    found.append(seqs[high])
            page = found[:count]
            runs = [store.runs[store.by_seq[seq]].snapshot(steps=False) for seq in page]
            return RunPage(runs, str(page[-1]) if len(found) > count else None)

    async def resume_run(self, op: ResumeRun) -> None:
        store = self._store
        with store.lock:
            run = store.run(op.run_id)
            record = run.record
            if record.state not in (RunState.FAILED, RunState.CANCELED):
                raise RunConflict(
                    f"run {op.run_id} is {record.state.value}: only a failed or canceled run "
                    "can be resumed"
                )
            store.indexed(run, add=False)
            run.steps = {
                position: step
                for position, step in run.steps.items()
                if step.state is StepState.SUCCESS and position < FAILURE_POSITIONS
            }
            record.state, record.due_at = RunState.STARTED, store.clock()
            record.completed_at = record.result = record.error = record.failed_step = None
            record.phase, record.failure_attempts = "run", 0
            record.timeout_at = op.timeout_at
            if op.headers is not None:
                record.headers = op.headers
            if op.flow is not None:
                record.flow = op.flow
            record.lease_owner = record.lease_until = None
            run.record, run.held = cleaned(record), False
            store.indexed(run, add=True)
            store.append_emits(op.emits, op.policy)

    async def delete_run(self, run_id: str) -> None:
        store = self._store
        with store.lock:
            run = store.run(run_id)
            if not run.record.state.finished:
                raise RunConflict(f"run {run_id} is still running: cancel it first, then delete it")
            store.indexed(run, add=False)
            store.labeled(run, add=False)
            del store.runs[run_id], store.by_seq[run.seq]
            store.channels.pop(run_id, None)

    async def list_waiters(self, event_id: str) -> list[Waiter]:
        store = self._store
        with store.lock:
            found = []
            for run_id, position in store.waits.get(event_id, set()):
                run = store.runs.get(run_id)
                step = None if run is None else run.steps.get(position)
                if run is None or step is None or run.record.state is not RunState.STARTED:
                    continue
                if step.state is StepState.PROGRESS and not step.resolved:
                    found.append(Waiter(run_id, position, step.name, step.wake_at))
            return sorted(found, key=lambda waiter: (waiter.run_id, waiter.position))


def _matches(record: RunRecord, where: RunFilter) -> bool:
    return (
        (where.state is None or record.state.value == where.state)
        and (where.workflow is None or record.workflow == where.workflow)
        and (where.label is None or where.label in record.labels)
        and (where.created_after is None or record.created_at > where.created_after)
        and (where.created_before is None or record.created_at < where.created_before)
    )
