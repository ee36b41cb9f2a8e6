"""The workflow half of the Redis backend: each change is one Lua script (``lua/``, see
``scripts.py``) that also appends the events reporting it, and the codecs between records and
Redis hashes. (The wakeups ride on the pub/sub connection: ``realtime.py``; listing runs is
``find_runs`` in ``recovery.py``.)"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from stepstream.backends.base import (
    CancelRun,
    Claim,
    CreateRun,
    FinishRun,
    Notify,
    ReleaseRun,
    RenewsAtOnce,
    Reported,
    SaveSteps,
    WaitEvent,
)
from stepstream.backends.redis.connection import Connection, map_redis_errors
from stepstream.errors import LeaseLost, RunConflict, RunNotFound
from stepstream.records import (
    FLOW_CONTROL,
    FlowLimits,
    Lease,
    RunRecord,
    RunState,
    StepRecord,
    dumps,
)

META_PREFIX = "m."
STALE_WAITERS = 100  # at most so many moved-on waiters dropped by one release


class RedisRuns(RenewsAtOnce):
    """``RunStore`` on ``_conn``."""

    _conn: Connection

    async def create_run(self, op: CreateRun) -> None:
        run = op.run
        due = "" if run.due_at is None else run.due_at
        status, *_ = await self._conn.script(
            "create_run",
            run.id,
            run.state.value,
            run.workflow,
            due,
            *counted(run_fields(run)),
            *steps_args(run.steps),
            len(run.labels),
            *run.labels,
            *self._emit_args(op),
        )
        if status == "EXISTS":
            raise RunConflict(
                f"a workflow run with id {run.id!r} already exists: ids are single-use"
            )

    async def get_run(self, run_id: str) -> RunRecord | None:
        conn = self._conn
        client = conn.redis()
        with map_redis_errors(conn.where):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(f"{conn.prefix}wf:run:{run_id}")
                pipe.hgetall(f"{conn.prefix}wf:steps:{run_id}")
                fields, steps = await pipe.execute()
        return run_record(fields, steps) if fields else None

    async def claim_runs(self, op: Claim) -> list[RunRecord]:
        claimed = await self._conn.script(
            "claim_runs",
            op.owner,
            op.lease_ms,
            op.limit,
            len(op.workflows),
            *op.workflows,
            *op.exclude,
        )
        runs = []
        for fields, steps, takeovers in claimed:
            run = run_record(fields, steps)
            run.takeovers = int(takeovers)
            runs.append(run)
        return runs

    async def renew_leases(self, leases: list[Lease], lease_ms: int) -> list[str]:
        flat: list[str | int] = []
        for lease in leases:
            flat += [lease.run_id, lease.owner, lease.epoch]
        held: list[str] = await self._conn.script("renew_leases", lease_ms, *flat)
        return held

    async def save_steps(self, op: SaveSteps) -> int:
        slot = op.release
        reply = await self._conn.script(
            "save_steps",
            *fence_args(op.lease),
            "" if slot is None else slot.key,
            0 if slot is None else slot.position,
            FLOW_CONTROL,
            STALE_WAITERS,
            *steps_args(op.steps),
            *self._emit_args(op),
        )
        fenced(reply, op.lease)
        return int(reply[1])

    async def release_run(self, op: ReleaseRun) -> None:
        reply = await self._conn.script(
            "release_run",
            *fence_args(op.lease),
            "" if op.due_at is None else op.due_at,
            int(op.hold),
            *counted(meta_fields(op.patch)),
            *self._emit_args(op),
        )
        fenced(reply, op.lease)

    async def finish_run(self, op: FinishRun) -> None:
        reply = await self._conn.script(
            "finish_run",
            *fence_args(op.lease),
            op.state.value,
            dumps(op.result),
            dumps(op.error),
            op.at,
            child_outcome(op.state, op.result, op.error),
            *self._emit_args(op),
        )
        fenced(reply, op.lease)

    async def wait_event(self, op: WaitEvent) -> str | None:
        step = op.step
        assert step.event_id is not None
        reply = await self._conn.script(
            "wait_event",
            *fence_args(op.lease),
            step.position,
            step.event_id,
            step.to_json(),
            *self._emit_args(op),
        )
        fenced(reply, op.lease)
        return reply[1] if len(reply) > 1 else None

    async def notify(self, op: Notify) -> int:
        run_id = op.run_id
        reply = await self._conn.script("notify", op.event_id, op.raw, run_id or "")
        if reply[0] == "MISSING":
            raise RunNotFound(run_id or "")
        if reply[0] == "FINISHED":
            raise RunConflict(
                f"run {run_id} already finished ({reply[1]}); nothing can wait anymore"
            )
        woken: int = reply[1]
        return woken

    async def cancel_run(self, op: CancelRun) -> None:
        run_id, error = op.run_id, "canceled"
        reply = await self._conn.script(
            "cancel_run",
            run_id,
            op.at,
            dumps(error),
            child_outcome(RunState.CANCELED, None, error),
            *self._emit_args(op),
        )
        if reply[0] == "MISSING":
            raise RunNotFound(run_id)
        if reply[0] == "FINISHED":
            raise RunConflict(
                f"run {run_id} already finished ({reply[1]}); only running runs can be canceled"
            )

    def _emit_args(self, op: Reported) -> list[str | int]:
        """``emit_all``'s arguments: trimming, then (stream key, event, JSON) triples."""
        policy = op.policy
        ttl = 0 if policy.expire_after is None else max(1, int(policy.expire_after * 1000))
        args: list[str | int] = [policy.max_length or 0, ttl]
        for emit in op.emits:
            args += [self._conn.stream_key(emit.channel), emit.event, emit.raw]
        return args


def fence_args(lease: Lease) -> tuple[str, str, int]:
    """A fenced script's arguments after the prefix: run id, owner, epoch (``fenced`` in Lua)."""
    return lease.run_id, lease.owner, lease.epoch


def fenced(reply: list[Any], lease: Lease) -> None:
    """Raise ``LeaseLost`` if a fenced script answered that ``lease`` no longer holds its run."""
    if reply[0] == "LEASE":
        raise LeaseLost(f"run {lease.run_id} is no longer held by this execution")


def counted(pairs: Mapping[str, str]) -> list[str]:
    """``{"a": "1"}`` → ``["1", "a", "1"]``: a count, then the flattened pairs (``hset_pairs``)."""
    flat = [str(len(pairs))]
    for key, value in pairs.items():
        flat += [key, value]
    return flat


def steps_args(steps: Sequence[StepRecord]) -> list[str]:
    return counted({str(step.position): step.to_json() for step in steps})


def run_fields(run: RunRecord) -> dict[str, str]:
    """The run's hash, without ``seq`` and the lease; each meta field is stored as JSON under
    ``m.<name>`` so a patch is a plain ``HSET`` and Lua never re-encodes it."""
    fields = {
        "id": run.id,
        "workflow": run.workflow,
        "state": run.state.value,
        "created_at": str(run.created_at),
    }
    for name, value in (
        ("completed_at", run.completed_at),
        ("due_at", run.due_at),
        ("parent", run.parent),
    ):
        if value is not None:
            fields[name] = str(value)
    fields.update(meta_fields(json.loads(run.meta_json())))
    return fields


def meta_fields(meta: Mapping[str, Any]) -> dict[str, str]:
    return {META_PREFIX + name: dumps(value) for name, value in meta.items()}


def run_record(flat: Sequence[str] | Mapping[str, str], steps: Any = None) -> RunRecord:
    """A run from its hash (a mapping, or HGETALL's flat list inside a script reply)."""
    fields = flat if isinstance(flat, Mapping) else _pairs(flat)
    meta = {
        name[len(META_PREFIX) :]: json.loads(value)
        for name, value in fields.items()
        if name.startswith(META_PREFIX)
    }
    flow = meta.pop("flow", None)
    run = RunRecord(
        id=fields["id"],
        workflow=fields["workflow"],
        state=RunState(fields["state"]),
        created_at=int(fields["created_at"]),
        completed_at=_int(fields.get("completed_at")),
        due_at=_int(fields.get("due_at")),
        lease_owner=fields.get("lease_owner"),
        lease_until=_int(fields.get("lease_until")),
        parent=fields.get("parent"),
        epoch=int(fields.get("epoch", 0)),
        flow=None if flow is None else FlowLimits.from_dict(flow),
        **meta,
    )
    if steps is not None:
        by_position = steps if isinstance(steps, Mapping) else _pairs(steps)
        run.steps = [
            StepRecord.from_json(by_position[position]) for position in sorted(by_position, key=int)
        ]
    return run


def child_outcome(state: RunState, result: str | None, error: str | None) -> str:
    """The ``out`` of a parent's invoke step when its child ends (as the SQLite backend writes
    it)."""
    return dumps({"state": state.value, "result": result, "error": error})


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)
