"""The usual step save on PostgreSQL goes as values (``ss_save_step``, migration 11) instead of
arrays (``ss_save_steps``): it must store, refuse, trim, expire and NOTIFY exactly as the array
function does for the same save."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stepstream.backends import backend_from_url
from stepstream.backends.base import CreateRun, ReleaseSlot, SaveSteps
from stepstream.backends.postgres import PostgresBackend
from stepstream.errors import LeaseLost
from stepstream.records import Emit, Lease, StepState
from tests.backends.test_postgres import Sink, fresh
from tests.backends.test_postgres_batch import saved_alike
from tests.backends.test_runs_contract import claim, emits, new_run, step

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backend(postgres_url: str) -> AsyncIterator[PostgresBackend]:
    made = backend_from_url(fresh(postgres_url))
    assert isinstance(made, PostgresBackend)
    await made.open()
    try:
        yield made
    finally:
        await made.close()


async def held(backend: PostgresBackend, *run_ids: str) -> list[Lease]:
    for run_id in run_ids:
        await backend.create_run(CreateRun(new_run(run_id)))
    runs = {run.id: run for run in await claim(backend, "w1", len(run_ids))}
    return [Lease(run_id, "w1", runs[run_id].epoch) for run_id in run_ids]


async def test_the_usual_save_goes_as_values_any_other_as_arrays(
    backend: PostgresBackend, calls: list[str]
) -> None:
    (mine,) = await held(backend, "r1")
    calls.clear()
    await backend.save_steps(SaveSteps(mine, (step(0),), emits=emits("r1", "a", "b")))
    await backend.save_steps(SaveSteps(mine, (step(1),)))  # no realtime: no events
    await backend.save_steps(SaveSteps(mine, (step(2), step(3))))
    await backend.save_steps(SaveSteps(mine, (step(4),), emits=emits("r2", "elsewhere")))
    flow = ReleaseSlot("r1", "k", 5)
    await backend.save_steps(SaveSteps(mine, (step(5),), release=flow))
    assert calls == ["ss_save_step", "ss_save_step"] + ["ss_save_steps"] * 3
    run = await backend.get_run("r1")
    assert run is not None and [saved.position for saved in run.steps] == [0, 1, 2, 3, 4, 5]


async def test_values_save_as_arrays_would(backend: PostgresBackend, calls: list[str]) -> None:
    """Every kind of save ``saved_alike`` makes (a stale or foreign lease, a canceled or missing
    run, trimming to max_length, expiry), one at a time: the one-step ones as values, then all
    of them as arrays."""

    async def usual(saves: list[SaveSteps]) -> list[Any]:
        return [await outcome(backend.save_steps(op)) for op in saves]

    async def arrays(saves: list[SaveSteps]) -> list[Any]:
        return [await outcome(backend._save_arrays(op)) for op in saves]

    calls.clear()
    as_values = await saved_alike(backend, "v", usual)
    assert calls.count("ss_save_step") == 6
    assert as_values == await saved_alike(backend, "a", arrays)


async def outcome(save: Any) -> Any:
    try:
        return await save
    except (Exception, LeaseLost) as exc:  # LeaseLost is a BaseException
        return exc


async def test_a_watched_run_hears_the_same_events_either_way(backend: PostgresBackend) -> None:
    """NOTIFY payloads (one over the 8,000-byte limit goes as its id, read back from storage),
    their order, and ids: one millisecond per save, numbered on within it."""
    sink = Sink()
    backend.set_sink(sink)
    await backend.listen(["x1", "x2"])
    values, arrays = await held(backend, "x1", "x2")
    large = json.dumps({"label": "x" * 9000})
    for position in range(4):
        for lease in (values, arrays):
            reported = (
                Emit(lease.run_id, "workflow.update", json.dumps({"label": f"start {position}"})),
                Emit(lease.run_id, "workflow.update", large if position == 2 else '{"label": 1}'),
            )
            op = SaveSteps(lease, (step(position, StepState.SUCCESS),), emits=reported)
            if lease is values:
                await backend.save_steps(op)
            else:
                await backend._save_arrays(op)
    await sink.until(lambda: len(sink.messages) == 8 * 2)

    def heard(channel: str) -> list[tuple[str, str]]:
        return [(m.event, m.raw) for m in sink.messages if m.channel == channel]

    assert heard("x1") == heard("x2")
    for channel in ("x1", "x2"):
        stored = await backend.read(channel)
        live = [m.id for m in sink.messages if m.channel == channel]
        assert live == [m.id for m in stored][-8:]
        pairs = [live[n : n + 2] for n in range(0, 8, 2)]
        for first, second in pairs:  # a save's two events: one millisecond, seq + 1
            ms, seq = first.split("-")
            assert second == f"{ms}-{int(seq) + 1}"
