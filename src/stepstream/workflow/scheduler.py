"""Schedules (DESIGN §13): stored definitions, and the loop each worker runs to start their runs.

Storage holds two kinds of entries per schedule (``EntryStore``): its definition under
``schedule`` (written by whoever creates, pauses, resumes or declares it) and its tick state
under ``schedule-tick`` (written only by schedulers), so a scheduler recording a tick never
overwrites a pause made meanwhile.

Exactly one run per tick, however many schedulers run: a tick's run has the id
``wfr_<schedule id>-<tick ms>`` (``cron.tick_run_id``), so storage refuses the second creator
(``RunConflict``), which moves on. A scheduler fires only the latest tick at or before now, so
after downtime the missed ticks do not run in a burst: the latest one runs, once. A schedule
never fires for a tick before it was created (or resumed: a pause skips its ticks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from stepstream.errors import (
    BackendError,
    ConfigurationError,
    RouteNotFound,
    RunConflict,
    StepstreamError,
    ValidationError,
)
from stepstream.records import dumps
from stepstream.workflow.cron import SCHEDULE_ID, Cron, check_schedule_id, tick_run_id
from stepstream.workflow.engine import to_json

if TYPE_CHECKING:
    from stepstream.clock import Clock
    from stepstream.workflow.engine import Engine
    from stepstream.workflow.registry import Workflow

SCHEDULE = "schedule"  # entries kind: definitions
TICK = "schedule-tick"  # entries kind: the last tick each schedule fired
LOOK_AGAIN = 1.0  # seconds at most between reads of the schedules (new ones, pauses, edits)
RETRY = 1.0  # seconds after a storage error
LATE = 0.002  # seconds past a tick before firing it: timers may wake a hair early
log = logging.getLogger("stepstream.scheduler")


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A schedule as stored: its definition (``since``: no tick before it fires) and what
    its last fired tick was."""

    id: str
    workflow: str
    cron: str
    timezone: str
    payload: Any
    paused: bool
    since: int
    declared: bool = False
    last_tick: int | None = None
    last_run_id: str | None = None
    last_error: str | None = None  # why its last tick started no run

    def definition(self) -> str:
        return dumps(
            {
                "workflow": self.workflow,
                "cron": self.cron,
                "timezone": self.timezone,
                "payload": self.payload,
                "paused": self.paused,
                "since": self.since,
                "declared": self.declared,
            }
        )

    @classmethod
    def parse(cls, key: str, definition: str, tick: str | None) -> ScheduleRecord:
        fields = json.loads(definition)
        state = json.loads(tick) if tick else {}
        return cls(
            id=key,
            workflow=fields["workflow"],
            cron=fields["cron"],
            timezone=fields.get("timezone", "UTC"),
            payload=fields.get("payload"),
            paused=bool(fields.get("paused")),
            since=int(fields.get("since", 0)),
            declared=bool(fields.get("declared")),
            last_tick=state.get("tick"),
            last_run_id=state.get("runId"),
            last_error=state.get("error"),
        )

    def next_run_at(self, now: int) -> int | None:
        """When its next run starts (``None`` while paused)."""
        return None if self.paused else Cron(self.cron, self.timezone).next_after(now)


def startable(workflow: Workflow, payload: Any) -> None:
    """Refuse (``ValidationError``) a schedule whose runs could not start: a payload that is
    not JSON, or one the workflow's flow control key cannot be computed from."""
    to_json(payload, "the schedule's payload")
    if workflow.flow_control is not None:
        workflow.flow_control.limits(payload, workflow.name)


class Schedules:
    """The schedules stored for ``engine``'s workflows: create, read, pause, resume, delete,
    and fire the ticks that are due.

    >>> # schedules = Schedules(workflows.engine)
    >>> # await schedules.create("nightly", "report", "0 2 * * *", timezone="Europe/Berlin")
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._crons: dict[tuple[str, str], Cron] = {}

    def _cron(self, record: ScheduleRecord) -> Cron:
        key = (record.cron, record.timezone)
        if key not in self._crons:
            self._crons[key] = Cron(record.cron, record.timezone)
        return self._crons[key]

    async def create(
        self, schedule_id: str, workflow: str, cron: str, timezone: str = "UTC", payload: Any = None
    ) -> ScheduleRecord:
        """Store a new schedule; ``RunConflict`` if the id is taken, ``UnknownWorkflow`` for a
        workflow not registered, ``ValidationError`` for a bad id, cron or time zone."""
        try:
            check_schedule_id(schedule_id)
            Cron(cron, timezone)
        except ConfigurationError as exc:
            raise ValidationError(str(exc)) from None
        startable(self.engine.registry.get(workflow), payload)
        record = ScheduleRecord(
            schedule_id, workflow, " ".join(cron.split()), timezone, payload, False, self._now()
        )
        try:
            await self.engine.backend.put_entry(
                SCHEDULE, schedule_id, record.definition(), create=True
            )
        except RunConflict:
            raise RunConflict(
                f"schedule {schedule_id!r} already exists: delete it first, or choose another id"
            ) from None
        # A schedule of the same id deleted earlier may have left its tick state behind.
        await self.engine.backend.delete_entry(TICK, schedule_id)
        return record

    async def list(self) -> list[ScheduleRecord]:
        """Every schedule, by id."""
        backend = self.engine.backend
        definitions = await backend.list_entries(SCHEDULE)
        ticks = await backend.list_entries(TICK)
        return [
            ScheduleRecord.parse(key, definitions[key], ticks.get(key))
            for key in sorted(definitions)
        ]

    async def get(self, schedule_id: str) -> ScheduleRecord:
        """The schedule ``schedule_id`` (``RouteNotFound``, a 404, if there is none)."""
        known = isinstance(schedule_id, str) and SCHEDULE_ID.fullmatch(schedule_id)
        definition = await self.engine.backend.get_entry(SCHEDULE, schedule_id) if known else None
        if definition is None:
            raise RouteNotFound(f"no schedule {schedule_id[:80]!r}: GET /api/schedules lists them")
        tick = await self.engine.backend.get_entry(TICK, schedule_id)
        return ScheduleRecord.parse(schedule_id, definition, tick)

    async def delete(self, schedule_id: str) -> None:
        await self.get(schedule_id)
        await self.engine.backend.delete_entry(SCHEDULE, schedule_id)
        await self.engine.backend.delete_entry(TICK, schedule_id)

    async def pause(self, schedule_id: str) -> ScheduleRecord:
        """Stop starting runs (a run started already goes on)."""
        record = replace(await self.get(schedule_id), paused=True)
        await self.engine.backend.put_entry(SCHEDULE, schedule_id, record.definition())
        return record

    async def resume(self, schedule_id: str) -> ScheduleRecord:
        """Start runs again from the next tick on: the ticks skipped while paused stay
        skipped."""
        record = replace(await self.get(schedule_id), paused=False, since=self._now())
        await self.engine.backend.put_entry(SCHEDULE, schedule_id, record.definition())
        return record

    def _now(self) -> int:
        return self.engine.clock()

    async def declare(self) -> None:
        """Store the schedules the registry's workflows declare (id: the workflow's name),
        keeping a pause an operator made; remove a declared schedule whose workflow, still
        registered here, declares none any more."""
        backend = self.engine.backend
        for name in self.engine.registry.names:
            declared = self.engine.registry.get(name).schedule
            stored = await backend.get_entry(SCHEDULE, name)
            old = None if stored is None else ScheduleRecord.parse(name, stored, None)
            if declared is None:
                if old is not None and old.declared:
                    await backend.delete_entry(SCHEDULE, name)
                    await backend.delete_entry(TICK, name)
                continue
            new = ScheduleRecord(
                name, name, declared.cron, declared.timezone, declared.payload, False, self._now()
            )
            new = replace(new, cron=" ".join(new.cron.split()), declared=True)
            if old is None:
                with contextlib.suppress(RunConflict):  # another worker starting: same content
                    await backend.put_entry(SCHEDULE, name, new.definition(), create=True)
                continue
            same_times = (old.cron, old.timezone) == (new.cron, new.timezone)
            new = replace(new, paused=old.paused, since=old.since if same_times else new.since)
            if new != old:
                await backend.put_entry(SCHEDULE, name, new.definition())

    async def fire_due(self, now: int, workflows: Collection[str]) -> int | None:
        """Start the run of each due tick of the schedules of ``workflows`` (those not paused):
        the latest tick at or before ``now``, if it is newer than the last one fired and not
        before the schedule's ``since``. Returns the next tick after ``now`` of any of them."""
        soonest: int | None = None
        for record in await self.list():
            if record.paused or record.workflow not in workflows:
                continue
            try:
                cron = self._cron(record)
            except ConfigurationError as exc:
                log.warning("schedule %s is skipped: %s", record.id, exc)
                continue
            tick = cron.latest(now)
            fresh = record.last_tick is None or (tick is not None and tick > record.last_tick)
            if tick is not None and tick >= record.since and fresh:
                await self._fire(record, tick)
            upcoming = cron.next_after(now)
            soonest = upcoming if soonest is None else min(soonest, upcoming)
        return soonest

    async def _fire(self, record: ScheduleRecord, tick: int) -> None:
        """Start the tick's run and record the tick as fired. A tick whose run cannot be
        started (the workflow refuses the payload, or is no longer registered) is recorded as
        fired with the reason (``lastError``), logged, and skipped: it must not stop the
        other schedules, nor be tried again every second."""
        run_id = tick_run_id(record.id, tick)
        fired: dict[str, Any] = {"tick": tick, "runId": run_id}
        try:
            await self.engine.trigger(record.workflow, record.payload, run_id=run_id)
        except RunConflict:
            pass  # another scheduler started this tick's run: there is one
        except BackendError:
            raise  # the loop retries
        except StepstreamError as exc:
            log.error("schedule %s: the run of its tick was not started: %s", record.id, exc)
            fired = {"tick": tick, "runId": None, "error": str(exc)}
        else:
            log.info("schedule %s: started %s", record.id, run_id)
        await self.engine.backend.put_entry(TICK, record.id, dumps(fired))


class Scheduler:
    """The loop a worker runs beside its claim loop: it declares the registry's schedules,
    then sleeps until the next tick of any schedule of ``workflows()`` (at most ``LOOK_AGAIN``
    seconds, so new and changed schedules are seen) and fires what is due. Storage errors are
    logged and retried; they never end it."""

    def __init__(
        self, engine: Engine, clock: Clock, workflows: Callable[[], Collection[str]]
    ) -> None:
        self.schedules = Schedules(engine)
        self.clock = clock
        self.workflows = workflows
        self._declared = False
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """End ``run`` (at once if it sleeps; else after what it is doing). A flag, not only a
        task cancel: a driver may swallow the cancel in the middle of a call."""
        self._stop.set()

    async def declare(self) -> None:
        """Store the declared schedules (a storage error: the loop tries again)."""
        try:
            await self.schedules.declare()
            self._declared = True
        except BackendError as exc:
            log.warning("storing the declared schedules failed (%s); retrying", exc)

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._declared:
                    await self.declare()
                now = self.clock()
                upcoming = await self.schedules.fire_due(now, self.workflows())
            except BackendError as exc:
                log.warning("firing schedules failed (%s); retrying in %s s", exc, RETRY)
                await self._sleep(RETRY)
                continue
            except Exception:  # a defect: logged, and the schedules go on
                log.exception("firing schedules failed; retrying in %s s", RETRY)
                await self._sleep(RETRY)
                continue
            wait = LOOK_AGAIN
            if upcoming is not None:
                wait = min(wait, (upcoming - self.clock()) / 1000 + LATE)
            await self._sleep(max(wait, 0.0))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
