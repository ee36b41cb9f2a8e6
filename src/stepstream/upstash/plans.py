"""What a gateway run keeps beside its steps: its parallel plan steps (docs/upstash-protocol.md
§4 "Parallel steps"), and the SDK's step types stepstream records as another kind.

When a ``Promise.all`` of N steps first runs, the SDK publishes N plan steps
(``{stepId: 0, targetStep, concurrent: N, ...}``), one message each; QStash delivers each plan on
its own, and the SDK then runs that plan's step: a ``context.run`` body, or the publish of a
sleep's result, a ``context.call``, a wait or an invoke. A sleep's plan is published with the
sleep as its delay (``Upstash-Delay`` / ``Upstash-Not-Before``): its delivery waits until
``due``.

Stored as one entry per target position (``PLANS`` + run id): ``{"record", "at", "due"}``;
an entry holding only the record (before plans had a due time) is due at once.

The SDK's ``CreateWebhook`` step is recorded as a ``Run`` step (its result is the hook's URL
and event id), and ``WaitForWebhook`` as a ``Wait`` (so every notify and waiter listing sees
it); the history must give the SDK its own type back, so it is kept in the same entry kind
(key ``kind-<position>``), read in the same call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepstream.records import dumps
from stepstream.upstash.messages import PLANS

if TYPE_CHECKING:
    from stepstream.workflow.engine import Engine


@dataclass(frozen=True, slots=True)
class Plan:
    """The plan ``record`` as the SDK published it (delivered back verbatim), when it was
    published (``at``) and when its delivery may go (``due``; epoch ms)."""

    record: dict[str, Any]
    at: int
    due: int

    @property
    def size(self) -> int:
        """The size of its parallel group."""
        return int(self.record["concurrent"])


KIND = "kind-"


@dataclass(frozen=True, slots=True)
class Kept:
    """A run's ``plans`` by target position (0-based), and the SDK's step ``kinds`` (type
    names) by position where they are not the recorded step's type."""

    plans: dict[int, Plan]
    kinds: dict[int, str]


async def load(engine: Engine, run_id: str) -> Kept:
    """What the run keeps beside its steps."""
    stored = await engine.backend.list_entries(PLANS + run_id)
    plans, kinds = {}, {}
    for key, value in stored.items():
        if key.startswith(KIND):
            kinds[int(key[len(KIND) :])] = json.loads(value)
            continue
        kept = json.loads(value)
        if "record" not in kept:
            kept = {"record": kept, "at": 0, "due": 0}
        plans[int(key)] = Plan(kept["record"], int(kept["at"]), int(kept["due"]))
    return Kept(plans, kinds)


async def keep(engine: Engine, run_id: str, target: int, plan: Plan) -> None:
    value = dumps({"record": plan.record, "at": plan.at, "due": plan.due})
    await engine.backend.put_entry(PLANS + run_id, f"{target:09d}", value)


async def keep_kind(engine: Engine, run_id: str, position: int, kind: str) -> None:
    """Remember that the step at ``position`` is the SDK's ``kind`` (written before the step,
    so a recorded step always finds it)."""
    await engine.backend.put_entry(PLANS + run_id, f"{KIND}{position:09d}", dumps(kind))
