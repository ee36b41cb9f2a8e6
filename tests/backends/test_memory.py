"""What only the in-memory backend has: its URLs (a private store, or one shared by name) and
the earliest due time the test kit jumps to. The rest of it is the contract suites'."""

from __future__ import annotations

import pytest

from stepstream import ConfigurationError
from stepstream.backends import backend_from_url
from stepstream.backends.base import Claim, CreateRun, ReleaseRun
from stepstream.backends.memory import MemoryBackend
from stepstream.records import Lease, RunRecord, RunState

pytestmark = pytest.mark.anyio


def run(run_id: str, due_at: int | None) -> RunRecord:
    return RunRecord(run_id, "wf", RunState.STARTED, created_at=1, due_at=due_at)


async def test_unnamed_stores_are_private_and_named_ones_shared() -> None:
    first, second = backend_from_url("memory://"), backend_from_url("memory://")
    shared, again = backend_from_url("memory://shared"), backend_from_url("memory://shared")
    assert first.url == "memory://" and shared.url == "memory://shared"
    await first.create_run(CreateRun(run("wfr_a", 0)))
    await shared.create_run(CreateRun(run("wfr_b", 0)))
    assert await second.get_run("wfr_a") is None
    assert await again.get_run("wfr_b") is not None


@pytest.mark.parametrize("url", ["memory://a/b", "memory://x?prefix=y"])
def test_options_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="memory://NAME"):
        backend_from_url(url)


async def test_next_due_at_counts_only_claimable_runs() -> None:
    now = {"ms": 1_000}
    backend = MemoryBackend(clock=lambda: now["ms"])
    assert backend.next_due_at() is None
    await backend.create_run(CreateRun(run("wfr_idle", None)))
    await backend.create_run(CreateRun(run("wfr_later", 5_000)))
    await backend.create_run(CreateRun(run("wfr_now", 1_000)))
    assert backend.next_due_at() == 1_000
    (claimed,) = await backend.claim_runs(Claim("w", 300, 1, ("wf",)))
    assert claimed.id == "wfr_now"
    assert backend.next_due_at() == 1_301  # once its lease expires
    lease = Lease(claimed.id, "w", claimed.epoch)
    await backend.release_run(ReleaseRun(lease, None))
    assert backend.next_due_at() == 5_000
