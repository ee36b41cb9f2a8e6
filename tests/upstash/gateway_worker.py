"""A stepstream worker process with the QStash gateway enabled, for the crash test:
``python -m tests.upstash.gateway_worker <sqlite file>`` (1 s lease)."""

from __future__ import annotations

import asyncio
import sys

import stepstream.upstash
from stepstream import Realtime, Workflows


async def main(database: str) -> None:
    workflows = Workflows(realtime=Realtime(backend=f"sqlite:///{database}"))
    stepstream.upstash.enable(workflows)
    await workflows.worker(lease=1.0, schedules=False).run_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
