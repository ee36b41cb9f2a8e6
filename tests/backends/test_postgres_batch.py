"""Group commit of step saves on PostgreSQL (``backends/postgres/batch.py``): saves made while
another is in flight go together as one ``ss_save_many`` call, and each caller still gets its
own answer: saved, ``LeaseLost``, or the error of its own save."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stepstream.backends import backend_from_url
from stepstream.backends.base import CreateRun, SaveSteps
from stepstream.backends.postgres import PostgresBackend
from stepstream.errors import LeaseLost, ValidationError
from stepstream.records import Lease, StepState
from tests.backends.test_postgres import fresh
from tests.backends.test_runs_contract import claim, emits, history, new_run, step

pytestmark = pytest.mark.anyio

RUNS = 12


@pytest.fixture
async def backend(postgres_url: str) -> AsyncIterator[PostgresBackend]:
    # pool_size 2: one save in flight at a time, so saves made together queue and go together
    made = backend_from_url(fresh(postgres_url, pool_size="2"))
    assert isinstance(made, PostgresBackend)
    await made.open()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
def calls(backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The functions the backend called, in order."""
    made: list[str] = []
    fetch = backend._db.fetch

    async def recording(sql: str, *args: Any) -> Any:
        made.append(sql.split("(")[0].removeprefix("SELECT "))
        return await fetch(sql, *args)

    monkeypatch.setattr(backend._db, "fetch", recording)
    return made


async def claimed_leases(backend: PostgresBackend, count: int) -> list[Lease]:
    for number in range(count):
        await backend.create_run(CreateRun(new_run(f"r{number:02}")))
    runs = await claim(backend, "w1", count)
    return sorted((Lease(run.id, "w1", run.epoch) for run in runs), key=lambda held: held.run_id)


async def test_saves_made_together_commit_together_each_with_its_answer(
    backend: PostgresBackend, calls: list[str]
) -> None:
    leases = await claimed_leases(backend, RUNS)
    stale = Lease(leases[5].run_id, "w1", leases[5].epoch - 1)  # an earlier claim's
    held = [stale if number == 5 else lease for number, lease in enumerate(leases)]
    saves = [
        SaveSteps(
            lease,
            (step(0, StepState.SUCCESS, out=f'"{lease.run_id}"'),),
            emits=emits(lease.run_id, "saved"),
        )
        for lease in held
    ]
    calls.clear()
    outcomes = await asyncio.gather(
        *(backend.save_steps(save) for save in saves), return_exceptions=True
    )

    assert "ss_save_many" in calls and len(calls) < RUNS  # some went together
    assert [type(outcome) for outcome in outcomes] == [
        LeaseLost if number == 5 else int for number in range(RUNS)
    ]
    for number, lease in enumerate(leases):
        run = await backend.get_run(lease.run_id)
        assert run is not None
        if number == 5:
            assert run.steps == [] and await history(backend, lease.run_id) == []
        else:
            assert [saved.out for saved in run.steps] == [f'"{lease.run_id}"']
            assert await history(backend, lease.run_id) == ["saved"]


async def test_a_save_postgres_refuses_fails_alone(
    backend: PostgresBackend, calls: list[str]
) -> None:
    leases = await claimed_leases(backend, RUNS)
    # a NUL in text: PostgreSQL refuses the whole batch, then each save goes alone
    outs = ['"bad\x00"' if number == 3 else '"fine"' for number in range(RUNS)]
    saves = [
        SaveSteps(lease, (step(0, StepState.SUCCESS, out=out),))
        for lease, out in zip(leases, outs, strict=True)
    ]
    calls.clear()
    outcomes = await asyncio.gather(
        *(backend.save_steps(save) for save in saves), return_exceptions=True
    )

    assert "ss_save_many" in calls
    assert [type(outcome) for outcome in outcomes] == [
        ValidationError if number == 3 else int for number in range(RUNS)
    ]
    for number, lease in enumerate(leases):
        run = await backend.get_run(lease.run_id)
        assert run is not None and len(run.steps) == (0 if number == 3 else 1)


async def test_saves_of_one_run_keep_their_order(backend: PostgresBackend) -> None:
    leases = await claimed_leases(backend, 3)
    saves = [
        SaveSteps(
            lease,
            (step(0, StepState.PROGRESS, out=f'"{turn}"'),),
            emits=emits(lease.run_id, str(turn)),
        )
        for turn in range(6)
        for lease in leases
    ]
    await asyncio.gather(*(backend.save_steps(save) for save in saves))

    for lease in leases:
        run = await backend.get_run(lease.run_id)
        assert run is not None and [saved.out for saved in run.steps] == ['"5"']
        assert await history(backend, lease.run_id) == [str(turn) for turn in range(6)]
