"""A run's history as QStash delivers it: the messages of the run in order, each a raw step
``{messageId, body: base64, callType}`` (docs/upstash-protocol.md §3, §4 "Parallel steps").

Recorded stepstream steps become the SDK's step records again: a wait's result is the base64
event data (or ``waitTimeout``), a parallel group's plan steps come before its results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from stepstream.records import FLOW_CONTROL, RunRecord, StepRecord, StepState, StepType, dumps
from stepstream.upstash.outbound import b64
from stepstream.upstash.plans import Plan

WEBHOOK_WAIT = "WaitForWebhook"
Entry = tuple[str, dict[str, Any] | str]  # message id, step record (or the initial payload)
Delivered = tuple[str, str, int | None]  # message id, body, the position it is for


def initial_text(run: RunRecord) -> str:
    """The run's initial payload as the SDK published it: a string as is, else JSON."""
    payload = json.loads(run.payload)
    return "" if payload is None else payload if isinstance(payload, str) else dumps(payload)


def raw_step(message_id: str, text: str) -> dict[str, str]:
    return {"messageId": message_id, "body": b64(text), "callType": "step"}


def hook_request(data: Any) -> Any:
    """What a ``waitForWebhook`` gets: the request its hook URL received (``hooks.py``); data
    notified by other means (``POST /api/events/{id}``, ``stepstream notify``,
    ``client.notify``) as the body of a POST, so the SDK can still rebuild a ``Request``."""
    if isinstance(data, dict) and isinstance(data.get("method"), str) and "header" in data:
        return data
    text = data if isinstance(data, str) else dumps(data)
    kind = "text/plain" if isinstance(data, str) else "application/json"
    return {
        "method": "POST",
        "proto": "http",
        "host": "localhost",
        "url": "/",
        "header": {"content-type": [kind]},
        "body": b64(text),
    }


def sdk_record(step: StepRecord, concurrent: int, kind: str | None = None) -> dict[str, Any]:
    """The SDK's record of a finished step (of the SDK's ``kind`` when it is not the recorded
    type: ``plans.py``)."""
    record: dict[str, Any] = {
        "stepId": step.position + 1,
        "stepName": step.name,
        "stepType": kind or step.type.value,
        "concurrent": concurrent,
    }
    if step.type is StepType.WAIT:
        record["waitEventId"] = step.event_id
        result = json.loads(step.out or "{}")
        if result.get("timed_out"):
            record["waitTimeout"] = True
        else:
            data = result.get("data")
            if kind == WEBHOOK_WAIT:
                data = hook_request(data)
            record["out"] = b64(data if isinstance(data, str) else dumps(data))
    elif step.out is not None:
        record["out"] = step.out
    elif step.type in (StepType.SLEEP, StepType.SLEEP_UNTIL):
        record["out"] = "null"  # as the SDK published it; the Python SDK reads it unchecked
    return record


@dataclass
class History:
    """What run ``run_id`` holds: its initial payload text, its steps by position and its
    parallel plans by target position.

    ``cache`` (kept by the delivery loop across its passes) holds each finished step's record
    and each raw step's JSON text, checked by identity against what they were made from: a
    finished step is never changed in place, a new record of one is a new object. So each
    delivery encodes only what is new since the last, not the whole history again."""

    run_id: str
    initial: str
    steps: dict[int, StepRecord]
    plans: dict[int, Plan]
    kinds: dict[int, str]
    cache: dict[Any, tuple[Any, Any]] = field(default_factory=dict)

    def record(self, position: int, concurrent: int) -> dict[str, Any]:
        step = self.steps[position]
        hit = self.cache.get((position, concurrent))
        if hit is not None and hit[0] is step:
            record: dict[str, Any] = hit[1]
            return record
        record = sdk_record(step, concurrent, self.kinds.get(position))
        self.cache[(position, concurrent)] = (step, record)
        return record

    def started(self, position: int) -> bool:
        """Whether the step at ``position`` is under way (a wait, call or invoke its plan's
        delivery published): its plan is not delivered again."""
        step = self.steps.get(position)
        return (
            step is not None
            and step.state is StepState.PROGRESS
            and step.waiting_for != FLOW_CONTROL
        )

    def done(self, position: int) -> bool:
        step = self.steps.get(position)
        return step is not None and step.state is StepState.SUCCESS

    def message_id(self, position: int, *, plan: bool = False) -> str:
        return f"msg_{self.run_id}_{'p' if plan else ''}{position + 1}"

    def entries(self) -> tuple[list[Entry], list[int]]:
        """The run's messages in order, up to the first step not done; and the targets of an
        unfinished parallel group's plans, still to run."""
        entries: list[Entry] = [(f"msg_{self.run_id}_0", self.initial)]
        position = 0
        while True:
            if position in self.plans:
                size = self.plans[position].size
                group = [p for p in range(position, position + size) if p in self.plans]
                entries += [(self.message_id(p, plan=True), self.plans[p].record) for p in group]
                done = [p for p in group if self.done(p)]
                entries += [(self.message_id(p), self.record(p, size)) for p in done]
                if len(done) < size:
                    return entries, [p for p in group if not self.done(p)]
                position += size
            elif self.done(position):
                entries.append((self.message_id(position), self.record(position, 1)))
                position += 1
            else:
                return entries, []

    def body(self, entries: list[Entry]) -> str:
        return "[" + ",".join(self.raw_text(mid, entry) for mid, entry in entries) + "]"

    def raw_text(self, message_id: str, entry: dict[str, Any] | str) -> str:
        hit = self.cache.get(message_id)
        if hit is not None and hit[0] is entry:
            text: str = hit[1]
            return text
        text = dumps(raw_step(message_id, entry if isinstance(entry, str) else dumps(entry)))
        self.cache[message_id] = (entry, text)
        return text

    def deliveries(self, now: int) -> tuple[list[Delivered], int | None]:
        """What to deliver at ``now``, as ``(message id, body, position)``: the whole history
        (position ``None``: the next step); or, while a parallel group runs, one delivery per
        plan still to run, due (a sleep's plan waits for the sleep) and not started, its history
        ending with that plan (the SDK then runs that plan's step, at the plan's target
        position). And when the next plan is due, if one still waits."""
        entries, pending = self.entries()
        if not pending:
            return [(entries[-1][0], self.body(entries), None)], None
        out: list[Delivered] = []
        for target in pending:
            if self.plans[target].due > now or self.started(target):
                continue
            plan_id = self.message_id(target, plan=True)
            cut = next(i for i, (mid, _) in enumerate(entries) if mid == plan_id)
            out.append((plan_id, self.body(entries[: cut + 1]), target))  # plans, then results
        later = [self.plans[t].due for t in pending if self.plans[t].due > now]
        return out, min(later, default=None)
