"""Chaos scenario: PostgreSQL terminating sessions at random (a failover, a pgbouncer restart,
an idle-connection killer).

Users trigger ``ten-steps`` runs and read them over HTTP (``stepstream server`` and two
``stepstream worker`` processes on a PostgreSQL of the scenario's own), SSE subscribers follow
channels the test process emits into, and meanwhile a connection of the test's own runs

    SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() ...

every ``KILL_EVERY`` s for ``STORM`` s: every session (``all``), or each with probability
one half (``half``, at full scale). Idle pooled connections, kept connections between calls
(``Database._idle``), connections in the middle of a call, the LISTEN connection: all die.

Asserted, as in ``test_outages.py`` (whose load, subscribers and checks it reuses): no
acknowledged run lost or failed, no completed step run again, no step committed twice, every
history equal to its log; every process still up; users saw clear errors only; every SSE
subscriber got every stored event exactly once, in order, with no hole. And no process reports
a storage call failed that the driver refused before sending it (``REFUSED_UNSENT``: a run
handed back for nothing): a call on a kept connection asyncpg had already taken back into its
pool when the server closed it ("released back to the pool": it must be replaced, as
``Database._call`` says), or on one whose server's FATAL error had arrived but not its close
("cannot switch to state": safe to run again on another connection). A call killed in the
middle may be handed back (its step runs again: at-least-once).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from tests.chaos.cluster import Fleet, postgres_of_our_own
from tests.chaos.conftest import FULL
from tests.chaos.test_outages import LEASE, schema_on, start_api, under_load

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

STORM = 15.0 if FULL else 4.0  # seconds sessions are being terminated
KILL_EVERY = 0.2 if FULL else 0.3  # seconds between two rounds of pg_terminate_backend
MODES = ["all", "half"] if FULL else ["all"]

# What asyncpg says when it refuses a call before sending anything.
REFUSED_UNSENT = ("connection has been released back to the pool", "cannot switch to state")
# Not counted: the LISTEN connection (``live.py``, not the pool) can be caught in the same window
# between the server's FATAL error and its close; the worker logs this and LISTENs again on a
# new connection before its next claim, polling meanwhile.
LISTEN_RETRIED = "cannot listen for wake-ups"

TERMINATE = (
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND backend_type = 'client backend' AND random() < $1"
)


class Terminator:
    """A thread with a connection of its own that terminates the other sessions of the
    database every ``every`` s, each with probability ``share``, from ``start()`` to
    ``stop()``."""

    def __init__(self, url: str, every: float, share: float) -> None:
        self.url = url
        self.every = every
        self.share = share
        self.rounds = 0
        self.terminated = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            assert not self._thread.is_alive(), "the terminator did not stop"

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            while not self._stop.is_set():
                try:
                    self.terminated += await conn.fetchval(TERMINATE, self.share)
                    self.rounds += 1
                except asyncpg.PostgresError as exc:  # reported, and tried again
                    self.errors.append(repr(exc))
                await asyncio.sleep(self.every)
        finally:
            await conn.close()


@pytest.mark.parametrize("mode", MODES)
async def test_postgres_sessions_terminated(tmp_path: Path, mode: str) -> None:
    with (
        postgres_of_our_own(tmp_path / "postgres.log") as postgres,
        Fleet(tmp_path, schema_on(postgres.url)) as fleet,
    ):
        url = await start_api(fleet, fleet.backend)
        killer = Terminator(postgres.url, KILL_EVERY, 1.0 if mode == "all" else 0.5)
        try:
            await under_load(
                fleet,
                url,
                fleet.backend,
                fault=killer.start,
                heal=killer.stop,
                outage=STORM,
                scenario=f"postgres-sessions-terminated[{mode}]",
                drain=LEASE * 4 + 30,
            )
        finally:
            killer.stop()
            print(
                f"terminator: {killer.rounds} rounds, {killer.terminated} sessions terminated, "
                f"errors: {killer.errors[:3] or 0}",
                flush=True,
            )
        assert killer.rounds >= STORM / KILL_EVERY / 2, "the terminator hardly ran"
        assert killer.terminated > 0, "no session was terminated"
        refused = Counter(
            f"{p.name}: {text}"
            for p in fleet.procs
            for line in p.output().splitlines()
            for text in REFUSED_UNSENT
            if text in line and not line.startswith(LISTEN_RETRIED)
        )
        assert not refused, f"calls failed though they were never sent: {dict(refused)}"
