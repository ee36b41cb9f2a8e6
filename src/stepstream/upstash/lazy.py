"""Lazy fetch (docs/upstash-protocol.md §9): a delivery whose history is large goes with an
empty body, and the SDK fetches the history with ``GET /v2/workflows/runs/{runId}``, cutting
it after the delivered message (``Upstash-Message-Id``).

Only to endpoints that can take it: the run's Init message advertised ``LazyFetch`` and
``WF_TriggerOnConfig`` (``@upstash/workflow`` 1.x). The Python SDK advertises ``LazyFetch`` too
but fails on an empty body, and does not send ``WF_TriggerOnConfig`` (open question 1). Only
over ``enable(lazy_over=...)`` bytes (default 1 MB): a full body saves the endpoint a round
trip, and most hosts take bodies of a few megabytes (Vercel 4.5 MB).
"""

from __future__ import annotations

import json
import weakref
from typing import TYPE_CHECKING, Any

from stepstream.records import RunRecord, RunState
from stepstream.upstash import plans
from stepstream.upstash.history import History, initial_text
from stepstream.upstash.messages import FEATURES
from stepstream.upstash.names import WORKFLOW

if TYPE_CHECKING:
    from stepstream.workflow.engine import Engine

NEEDED = frozenset({"LazyFetch", "WF_TriggerOnConfig"})
LAZY_OVER = 1_000_000  # bytes of history above which a delivery goes empty, by default
LIMITS: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()


def lazy(engine: Engine, run: RunRecord, body: str) -> bool:
    """Whether the delivery of ``body`` to ``run``'s endpoint goes with an empty body."""
    features = {part.strip() for part in run.headers.get(FEATURES, "").split(",")}
    return features >= NEEDED and len(body) > LIMITS.get(engine, LAZY_OVER)


async def fetched(engine: Engine, run_id: str) -> list[dict[str, Any]] | None:
    """The run's history as ``GET /v2/workflows/runs/{runId}`` answers it: every message of
    the run, in order (a parallel group's plans before its results); ``None`` for a run that
    is not a gateway run under way (the SDK then answers ``workflow-already-ended``)."""
    run = await engine.backend.get_run(run_id)
    if run is None or run.workflow != WORKFLOW or run.state is not RunState.STARTED:
        return None
    kept = await plans.load(engine, run.id)
    steps = {step.position: step for step in run.steps}
    history = History(run.id, initial_text(run), steps, kept.plans, kept.kinds)
    entries, _ = history.entries()
    raw: list[dict[str, Any]] = json.loads(history.body(entries))
    return raw
