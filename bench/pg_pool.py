"""What a call costs on top of the round trip: asyncpg's pool beside stepstream's kept connections.

    python bench/pg_pool.py --calls 2000 --rounds 5

One private PostgreSQL (``tests/postgres.py``, ``fsync=off``: the statement is ``SELECT 1``,
nothing is written) and uvloop, as ``stepstream worker`` runs. Three ways to send the same
statement, alternating round by round so load on the shared machine falls on all three:

- *connection*: ``Connection.fetch`` on one connection held for the whole run (the floor);
- *asyncpg pool*: ``Pool.fetch`` (acquire, fetch, release: what ``Database.fetch`` did before);
- *Database.fetch*: stepstream's (``backends/postgres/connection.py``), which keeps released
  connections for the next call instead of giving them back to the pool.

Prints the p50 of each (µs per call, median of the rounds' p50s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

import asyncpg  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402
from wf_common import alternate_p50s  # noqa: E402

from stepstream.backends.postgres.connection import Database  # noqa: E402

SQL = "SELECT 1"


async def _keep(conn: object) -> None:
    """No reset query on release (as ``Database`` configures its pool)."""


async def measure(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    conn = await asyncpg.connect(url)
    pool = await asyncpg.create_pool(url, min_size=0, max_size=10, reset=_keep)
    database = Database(url, "stepstream_pool_bench", 10, "bench")
    await database.open()

    async def direct() -> None:
        await conn.fetch(SQL)

    async def pooled() -> None:
        await pool.fetch(SQL)

    async def kept() -> None:
        await database.fetch(SQL)

    ways: dict[str, Callable[[], Awaitable[None]]] = {
        "connection": direct,
        "asyncpg pool": pooled,
        "Database.fetch": kept,
    }
    try:
        return await alternate_p50s(ways, calls, rounds)
    finally:
        await database.close()
        await pool.close()
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import uvloop

    with postgres_server(free_port()) as server:
        p50s = uvloop.run(measure(server.url, args.calls, args.rounds))
    print(f"python bench/pg_pool.py --calls {args.calls} --rounds {args.rounds}")
    print("| way | p50 µs per call | rounds' p50s |")
    print("|---|--:|---|")
    floor = statistics.median(p50s["connection"])
    for name, values in p50s.items():
        p50 = statistics.median(values)
        extra = "" if name == "connection" else f" (+{p50 - floor:.0f})"
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {name} | {p50:.0f}{extra} | {shown} |")


if __name__ == "__main__":
    main()
