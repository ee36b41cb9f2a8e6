"""Recovering, finding and removing runs (DESIGN §14): resume a failed or canceled run in
place, restart it as a new run, fork a new run from one of its steps, act on many runs at once,
delete finished runs (one, or all older than the retention), and list who waits for an event.

>>> # await resume(engine, "wfr_abc")                   # failed step runs again, fresh retries
>>> # new_id = await fork(engine, "wfr_abc", "charge")  # steps before "charge" are copied
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Literal

from stepstream import events
from stepstream.backends.base import ResumeRun, RunFilter, Waiter
from stepstream.errors import RunConflict, RunNotFound, ValidationError
from stepstream.records import (
    FAILURE_POSITIONS,
    RUN_STATES,
    Emit,
    FlowLimits,
    RunRecord,
    RunState,
    StepState,
)
from stepstream.workflow.engine import Engine, run_id_from

BULK_LIMIT = 1000  # runs one bulk request acts on at most
RETENTION_BATCH = 100  # runs one retention pass looks at per finished state
RECOVERABLE = (RunState.FAILED, RunState.CANCELED)
log = logging.getLogger("stepstream.recovery")

Action = Literal["cancel", "resume"]


async def resume(
    engine: Engine,
    run_id: str,
    *,
    headers: dict[str, str] | None = None,
    flow: FlowLimits | None = None,
) -> None:
    """Continue a failed or canceled run in place: its completed steps are kept (not run
    again), the step that failed runs with fresh retries. ``RunConflict`` otherwise.
    ``headers`` and ``flow``, when given, replace the run's from now on (the QStash gateway's
    DLQ resume with overrides)."""
    run = await _found(engine, run_id)
    now = engine.clock()
    update = engine.reported(events.run_start(run_id, now, resumed=True))
    op = ResumeRun(
        run_id,
        now,
        timeout_at=_timeout_at(engine, run.workflow, now, run.timeout_at),
        headers=headers,
        flow=flow,
        emits=update,
        policy=engine.policy,
    )
    await engine.backend.resume_run(op)
    engine.announce(run_id, RunState.STARTED)
    engine.wake()


async def restart(
    engine: Engine,
    run_id: str,
    *,
    run_as: str | None = None,
    headers: dict[str, str] | None = None,
    flow: FlowLimits | None = None,
) -> str:
    """A new run of ``run_id``'s workflow with its payload, headers, labels and flow control
    (``restartedFrom`` in its log); its id. ``headers`` and ``flow``, when given, are the new
    run's instead (the QStash gateway's DLQ restart with overrides)."""
    old = await _found(engine, run_id)
    new = _again(engine, old, run_as)
    new.restarted_from = old.id
    if headers is not None:
        new.headers = dict(headers)
    if flow is not None:
        new.flow = flow
    await engine.create(new)
    return new.id


async def fork(engine: Engine, run_id: str, from_step: str, *, run_as: str | None = None) -> str:
    """A new run of ``run_id`` whose steps before the first step named ``from_step`` are
    copied from it, not executed (``forkedFrom`` in its log); its id."""
    old = await _found(engine, run_id)
    names = [step.name for step in old.steps if step.position < FAILURE_POSITIONS]
    if from_step not in names:
        shown = ", ".join(repr(name) for name in dict.fromkeys(names)) or "none"
        raise ValidationError(
            f"run {run_id} has no step named {from_step!r} to fork from; its steps: {shown}"
        )
    at = next(step.position for step in old.steps if step.name == from_step)
    new = _again(engine, old, run_as)
    new.forked_from = old.id
    new.steps = [
        replace(step)
        for step in old.steps
        if step.position < at and step.state is StepState.SUCCESS
    ]
    copied: list[Emit] = []
    for step in new.steps:
        copied += [
            events.step_start(new.id, step, copied=True),
            events.step_finish(new.id, step, copied=True),
        ]
    await engine.create(new, *copied)
    return new.id


def _timeout_at(engine: Engine, workflow: str, now: int, unknown: int | None) -> int | None:
    """The run timeout of a run of ``workflow`` starting (again) ``now``, as this process
    registered the workflow; ``unknown`` if this process does not know it."""
    definition = engine.registry.find(workflow)
    if definition is None:
        return unknown
    return None if definition.timeout is None else now + int(definition.timeout * 1000)


def _again(engine: Engine, old: RunRecord, run_as: str | None) -> RunRecord:
    now = engine.clock()
    return RunRecord(
        id=run_id_from(run_as),
        workflow=old.workflow,
        state=RunState.STARTED,
        created_at=now,
        payload=old.payload,
        headers=dict(old.headers),
        due_at=now,
        timeout_at=_timeout_at(engine, old.workflow, now, None),
        flow=old.flow,
        labels=list(old.labels),
    )


async def _found(engine: Engine, run_id: str) -> RunRecord:
    run = await engine.backend.get_run(run_id)
    if run is None:
        raise RunNotFound(run_id)
    return run


async def delete(engine: Engine, run_id: str) -> None:
    """Delete a finished run with its channel history; ``RunConflict`` while it runs."""
    await engine.backend.delete_run(run_id)
    engine.announce(run_id, None)


async def waiters(engine: Engine, event_id: str) -> list[Waiter]:
    """The steps waiting for ``event_id`` now."""
    if not isinstance(event_id, str) or not event_id:
        raise ValidationError("event_id must be a non-empty string")
    return await engine.backend.list_waiters(event_id)


@dataclass(frozen=True, slots=True)
class Selection:
    """The runs a bulk action is for: these ``ids``, or those matching ``where``."""

    ids: tuple[str, ...] | None = None
    where: RunFilter | None = None

    def __post_init__(self) -> None:
        if (self.ids is None) == (self.where is None):
            raise ValidationError('give either "ids" (a list of run ids) or "filter", not both')
        if self.ids is not None and len(self.ids) > BULK_LIMIT:
            raise ValidationError(
                f"{len(self.ids)} ids: a bulk request acts on at most {BULK_LIMIT} runs; "
                "send them in several requests"
            )
        if self.where == RunFilter():
            raise ValidationError(
                "an empty filter would select every run: name at least one field (state, "
                'workflow, label, createdAfter, createdBefore), e.g. {"state": "RUN_FAILED"}'
            )
        state = None if self.where is None else self.where.state
        if state is not None and state not in RUN_STATES:
            raise ValidationError(f"state={state[:40]!r}: use one of {', '.join(RUN_STATES)}")


async def bulk(engine: Engine, action: Action, selection: Selection) -> int:
    """Cancel or resume the selected runs, at most ``BULK_LIMIT``; how many it changed (runs
    in no state for it, or gone meanwhile, are skipped)."""
    done = 0
    for run_id in await _selected(engine, action, selection):
        try:
            if action == "cancel":
                await engine.cancel(run_id)
            else:
                await resume(engine, run_id)
        except (RunConflict, RunNotFound):
            continue
        done += 1
    return done


async def _selected(engine: Engine, action: Action, selection: Selection) -> list[str]:
    if selection.ids is not None:
        return list(dict.fromkeys(selection.ids))
    where = selection.where
    assert where is not None
    wanted = [RunState.STARTED] if action == "cancel" else list(RECOVERABLE)
    if where.state is not None:
        wanted = [state for state in wanted if state.value == where.state]
    found: list[str] = []
    for state in wanted:
        found += await _ids(engine, replace(where, state=state.value), BULK_LIMIT - len(found))
    return found


async def _ids(engine: Engine, where: RunFilter, limit: int) -> list[str]:
    found: list[str] = []
    cursor: str | None = None
    while len(found) < limit:
        page = await engine.backend.find_runs(where, cursor=cursor, count=min(limit, 200))
        found += [run.id for run in page.runs][: limit - len(found)]
        if page.cursor is None:
            break
        cursor = page.cursor
    return found


async def sweep(engine: Engine, retention: float, *, pages: int = 10) -> int:
    """Delete finished runs that completed more than ``retention`` seconds ago, with their
    channel history: at most ``pages`` times ``RETENTION_BATCH`` runs looked at per finished state.
    How many it deleted."""
    cutoff = engine.clock() - int(retention * 1000)
    deleted = 0
    for state in (RunState.SUCCESS, RunState.FAILED, RunState.CANCELED):
        where = RunFilter(state=state.value, created_before=cutoff)
        cursor: str | None = None
        for _ in range(pages):
            page = await engine.backend.find_runs(where, cursor=cursor, count=RETENTION_BATCH)
            for run in page.runs:
                if run.completed_at is not None and run.completed_at < cutoff:
                    deleted += await _delete_quietly(engine, run.id)
            if page.cursor is None:
                break
            cursor = page.cursor
    return deleted


async def _delete_quietly(engine: Engine, run_id: str) -> int:
    try:
        await delete(engine, run_id)
    except (RunConflict, RunNotFound):  # resumed or deleted meanwhile
        return 0
    return 1
