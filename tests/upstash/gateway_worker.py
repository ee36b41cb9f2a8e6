"""A stepstream worker process with the QStash gateway enabled, for the crash tests:
``python -m tests.upstash.gateway_worker <sqlite file> [<stall directory>]`` (1 s lease).

With a stall directory, the first of these processes to deliver a run's second step stalls
just before (its event loop blocked, as by a synchronous body: no heartbeat renews its lease)
until another worker has taken the run over and recorded that step. It writes ``stalled`` in
the directory when it blocks, and ``ended`` (how its execution of the run ended) after.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import stepstream.upstash
from stepstream import Realtime, Workflows
from stepstream.records import StepState
from stepstream.upstash.delivery import Delivery

STALL_LIMIT = 30.0  # seconds a stall lasts at most, should the takeover never come


def recorded(database: str, run_id: str) -> int:
    """How many steps of ``run_id`` are recorded finished, read outside the worker's storage."""
    with sqlite3.connect(database, timeout=5) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM wf_steps WHERE run_id = ? "
            "AND json_extract(data, '$.state') = 'STEP_SUCCESS'",
            (run_id,),
        ).fetchone()
    return int(count)


def block_until_recorded(database: str, run_id: str, steps: int) -> None:
    """Sleep (blocking) until ``steps`` steps of ``run_id`` are recorded, or ``STALL_LIMIT``."""
    deadline = time.monotonic() + STALL_LIMIT
    while recorded(database, run_id) < steps and time.monotonic() < deadline:
        time.sleep(0.05)


def stall_before_step_two(database: str, directory: Path) -> None:
    """Make ``Delivery`` stall once, as the module docstring says."""
    settle, loop = Delivery.settle, Delivery.loop
    stalled: list[bool] = []

    async def stalling_settle(self: Delivery) -> tuple[bool, int | None]:
        done = [s for s in self.steps.values() if s.state is StepState.SUCCESS]
        if len(done) == 1 and not stalled:
            try:
                os.close(os.open(directory / "stalled", os.O_CREAT | os.O_EXCL))
                stalled.append(True)
            except FileExistsError:
                pass  # another process stalled: this one is the takeover
            else:
                block_until_recorded(database, self.run.id, 2)  # in the loop: the stall
        return await settle(self)

    async def watched_loop(self: Delivery) -> Any:
        outcome = "returned"
        try:
            return await loop(self)
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            if stalled:
                (directory / "ended").write_text(outcome)

    Delivery.settle = stalling_settle  # type: ignore[method-assign]
    Delivery.loop = watched_loop  # type: ignore[method-assign]


async def main(database: str, stall: str | None) -> None:
    if stall is not None:
        stall_before_step_two(database, Path(stall))
    workflows = Workflows(realtime=Realtime(backend=f"sqlite:///{database}"))
    stepstream.upstash.enable(workflows)
    await workflows.worker(lease=1.0, schedules=False).run_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
