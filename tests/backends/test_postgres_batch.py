"""Group commit of step saves on PostgreSQL (``backends/postgres/batch.py``): saves made while
another is in flight go together as one ``ss_save_many`` call, and each caller still gets its
own answer: saved, ``LeaseLost``, or the error of its own save. A save sent alone, when it is
the usual one, goes as values (``ss_save_step``, migration 11) instead of arrays
(``ss_save_steps``): it must store, refuse, trim, expire and NOTIFY as the array function
does."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from stepstream import HistoryPolicy
from stepstream.backends import backend_from_url
from stepstream.backends.base import CancelRun, CreateRun, ReleaseSlot, SaveSteps
from stepstream.backends.postgres import PostgresBackend, connection
from stepstream.errors import BackendUnavailable, LeaseLost, ValidationError
from stepstream.records import Emit, Lease, StepState
from tests.backends.test_postgres import Sink, fresh
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

    async def recording(sql: str, *args: Any, read: bool = False) -> Any:
        made.append(sql.split("(")[0].removeprefix("SELECT "))
        return await fetch(sql, *args, read=read)

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


async def saved_alike(
    backend: PostgresBackend, prefix: str, save: Callable[[list[SaveSteps]], Awaitable[list[Any]]]
) -> list[Any]:
    """What each kind of save leaves, made by ``save`` (a batch or one at a time)."""
    for number in range(8):
        await backend.create_run(CreateRun(new_run(f"{prefix}{number}")))
    runs = {run.id: run for run in await claim(backend, prefix, 8)}
    held = [
        Lease(f"{prefix}{number}", prefix, runs[f"{prefix}{number}"].epoch) for number in range(8)
    ]
    await backend.cancel_run(CancelRun(held[7].run_id, at=1))
    three, short = emits(held[3].run_id, "a", "b", "c"), HistoryPolicy(expire_after=0.05)
    saves = [
        saving(held[0], "filler"),
        SaveSteps(held[1], ()),
        SaveSteps(held[2], (step(0, StepState.SUCCESS, out="1"), step(1))),
        SaveSteps(held[3], (step(0),), emits=three, policy=HistoryPolicy(max_length=2)),
        SaveSteps(held[4], (), emits=emits(held[4].run_id, "gone"), policy=short),
        saving(Lease(held[5].run_id, prefix, held[5].epoch - 1), "stale"),
        saving(Lease(held[6].run_id, "someone else", held[6].epoch), "not theirs"),
        saving(held[7], "canceled"),
        saving(Lease(f"{prefix}missing", prefix, 1), "missing"),
    ]
    outcomes = await save(saves)
    await asyncio.sleep(0.1)  # past expire_after
    left: list[Any] = []
    for outcome, op in zip(outcomes, saves, strict=True):
        run = await backend.get_run(op.lease.run_id)
        read = await backend.read(op.lease.run_id)
        ids = [tuple(map(int, message.id.split("-"))) for message in read]
        left.append(
            (
                type(outcome).__name__,
                run and [(s.position, s.state, s.out) for s in run.steps],
                [message.data["label"] for message in read],
                ids == sorted(ids),
            )
        )
    return left


async def test_a_batch_saves_as_each_save_alone_would(
    backend: PostgresBackend, calls: list[str]
) -> None:
    async def together(saves: list[SaveSteps]) -> list[Any]:
        return await asyncio.gather(*map(backend.save_steps, saves), return_exceptions=True)

    async def alone(saves: list[SaveSteps]) -> list[Any]:
        return [(await together([op]))[0] for op in saves]

    batched = await saved_alike(backend, "b", together)
    assert calls.count("ss_save_many") == 1
    assert batched == await saved_alike(backend, "s", alone)
    assert [outcome for outcome, *_ in batched] == ["int"] * 5 + ["LeaseLost"] * 4
    assert batched[3][2] == ["b", "c"] and batched[4][2] == []


@contextlib.asynccontextmanager
async def row_locked(url: str, backend: PostgresBackend, run_id: str) -> AsyncIterator[None]:
    """Hold ``run_id``'s row locked from another connection: a save of it waits meanwhile."""
    admin = await asyncpg.connect(url)
    try:
        async with admin.transaction():
            await admin.execute(f'SET LOCAL search_path TO "{backend._db.schema}"')
            await admin.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run_id)
            yield
    finally:
        await admin.close()


def saving(lease: Lease, label: str) -> SaveSteps:
    out = f'"{label}"'
    return SaveSteps(lease, (step(0, out=out),), emits=emits(lease.run_id, label))


async def until(condition: Callable[[], object], within: float = 10) -> None:
    for _ in range(int(within * 100)):  # the batcher's own state: nothing to wait on
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not so within {within} s")


def idle(backend: PostgresBackend) -> bool:
    saves = backend._saves
    return not saves._queue and not saves._busy and saves._inflight == 0


async def test_callers_gone_while_queued_or_in_flight_hold_up_nothing(
    backend: PostgresBackend, postgres_url: str
) -> None:
    leases = await claimed_leases(backend, 3)
    async with row_locked(postgres_url, backend, leases[0].run_id):
        first = asyncio.create_task(backend.save_steps(saving(leases[0], "a")))
        await until(lambda: backend._saves._inflight == 1)
        queued = asyncio.create_task(backend.save_steps(saving(leases[1], "b")))
        later = asyncio.create_task(backend.save_steps(saving(leases[0], "c")))
        other = asyncio.create_task(backend.save_steps(saving(leases[2], "d")))
        await asyncio.sleep(0.05)
        # In flight, sent by its own caller (nothing was queued): cancelled with the caller,
        # as any call is (PostgreSQL cancels the statement waiting for the lock).
        first.cancel()
        queued.cancel()  # queued: never sent
        await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(later, other), 10)
    await until(lambda: idle(backend))
    assert [await history(backend, lease.run_id) for lease in leases] == [["c"], [], ["d"]]


async def test_closing_answers_every_save_queued_or_in_flight(postgres_url: str) -> None:
    made = backend_from_url(fresh(postgres_url, pool_size="2"))
    assert isinstance(made, PostgresBackend)
    await made.open()
    leases = await claimed_leases(made, 6)
    async with row_locked(postgres_url, made, leases[0].run_id):
        saves = [asyncio.create_task(made.save_steps(saving(lease, "x"))) for lease in leases]
        await until(lambda: made._saves._inflight == 1)
        closing = asyncio.create_task(made.close())
        await asyncio.sleep(0.1)
    outcomes = await asyncio.wait_for(asyncio.gather(*saves, return_exceptions=True), 20)
    await asyncio.wait_for(closing, 20)
    assert all(outcome == 0 or isinstance(outcome, BackendUnavailable) for outcome in outcomes)


async def test_a_batch_cut_off_saves_nothing_and_says_unavailable(
    backend: PostgresBackend, postgres_url: str
) -> None:
    leases = await claimed_leases(backend, 6)
    admin = await asyncpg.connect(postgres_url)
    try:
        async with row_locked(postgres_url, backend, leases[3].run_id):
            saves = [asyncio.create_task(backend.save_steps(saving(held, "x"))) for held in leases]
            pid = None
            async with asyncio.timeout(10):  # the batch of r01..r05 waits for r03
                while pid is None:
                    pid = await admin.fetchval(
                        "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT ss_save_many%'"
                    )
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            outcomes = await asyncio.wait_for(asyncio.gather(*saves, return_exceptions=True), 10)
    finally:
        await admin.close()
    assert [type(outcome) for outcome in outcomes] == [int] + [BackendUnavailable] * 5
    assert [await history(backend, held.run_id) for held in leases[1:]] == [[]] * 5
    await asyncio.gather(*(backend.save_steps(saving(held, "y")) for held in leases))
    assert idle(backend) and await history(backend, leases[1].run_id) == ["y"]


async def busy_for(seconds: float, *work: Callable[[], Awaitable[object]]) -> list[BaseException]:
    """Run each of ``work`` over and over for ``seconds``; what they raised."""
    failures: list[BaseException] = []
    stop = asyncio.get_running_loop().time() + seconds

    async def repeat(one: Callable[[], Awaitable[object]]) -> None:
        while asyncio.get_running_loop().time() < stop:
            for outcome in await asyncio.gather(one(), return_exceptions=True):
                if isinstance(outcome, BaseException):
                    failures.append(outcome)

    await asyncio.gather(*map(repeat, work))
    return failures


async def saved_all(backend: PostgresBackend, saves: list[SaveSteps]) -> None:
    for outcome in await asyncio.gather(*map(backend.save_steps, saves), return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


async def test_batches_and_the_heartbeat_do_not_deadlock(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without retries a deadlock shows as BackendUnavailable. The heartbeat renews in claim
    # order, not id order (here: the reverse).
    monkeypatch.setattr(connection, "RETRIES", 1)
    made = backend_from_url(fresh(postgres_url, pool_size="6"))
    assert isinstance(made, PostgresBackend)
    await made.open()
    try:
        leases = await claimed_leases(made, 60)
        groups = [[saving(lease, "x") for lease in leases[part::3]] for part in range(3)]
        failures = await busy_for(
            4,
            *(lambda group=group: saved_all(made, group) for group in groups),
            lambda: made.renew_leases(leases[::-1], 30_000),
        )
    finally:
        await made.close()
    assert failures == []


async def test_batches_sharing_channels_do_not_deadlock(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two processes' saves write to channels X and Y, each group in the other order.
    monkeypatch.setattr(connection, "RETRIES", 1)
    url = fresh(postgres_url, pool_size="2")
    one, two = backend_from_url(url), backend_from_url(url)
    assert isinstance(one, PostgresBackend) and isinstance(two, PostgresBackend)
    await one.open()
    await two.open()
    try:
        leases = await claimed_leases(one, 20)
        crossed = [
            SaveSteps(lease, (step(0),), emits=emits("XY"[number % 2 ^ (number >= 10)], "e"))
            for number, lease in enumerate(leases)
        ]
        failures = await busy_for(
            4, lambda: saved_all(one, crossed[:10]), lambda: saved_all(two, crossed[10:])
        )
    finally:
        await one.close()
        await two.close()
    assert failures == []


async def test_a_save_that_goes_alone_keeps_its_place_in_its_runs_order(
    backend: PostgresBackend, postgres_url: str
) -> None:
    first, mine = await claimed_leases(backend, 2)
    also_elsewhere = emits(mine.run_id, "1") + emits("elsewhere", "1")
    async with row_locked(postgres_url, backend, first.run_id):
        saves = [
            backend.save_steps(saving(first, "a")),  # in flight, waiting for the lock
            backend.save_steps(saving(first, "b")),
            backend.save_steps(SaveSteps(mine, (step(0, out='"1"'),), emits=also_elsewhere)),
            backend.save_steps(saving(mine, "2")),
        ]
        sent = asyncio.gather(*saves)
        await until(lambda: len(backend._saves._queue) == 3)
    await asyncio.wait_for(sent, 10)

    run = await backend.get_run(mine.run_id)
    assert run is not None and [saved.out for saved in run.steps] == ['"2"']
    assert await history(backend, mine.run_id) == ["1", "2"]


async def test_the_usual_save_goes_as_values_any_other_as_arrays(
    backend: PostgresBackend, calls: list[str]
) -> None:
    (mine,) = await claimed_leases(backend, 1)
    calls.clear()
    await backend.save_steps(SaveSteps(mine, (step(0),), emits=emits(mine.run_id, "a", "b")))
    await backend.save_steps(SaveSteps(mine, (step(1),)))  # no realtime: no events
    await backend.save_steps(SaveSteps(mine, (step(2), step(3))))
    await backend.save_steps(SaveSteps(mine, (step(4),), emits=emits("elsewhere", "e")))
    flow = ReleaseSlot(mine.run_id, "k", 5)
    await backend.save_steps(SaveSteps(mine, (step(5),), release=flow))
    assert calls == ["ss_save_step", "ss_save_step"] + ["ss_save_steps"] * 3
    run = await backend.get_run(mine.run_id)
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
    values, arrays = await claimed_leases(backend, 2)
    sink = Sink()
    backend.set_sink(sink)
    await backend.listen([values.run_id, arrays.run_id])
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

    assert heard(values.run_id) == heard(arrays.run_id)
    for channel in (values.run_id, arrays.run_id):
        stored = await backend.read(channel)
        live = [m.id for m in sink.messages if m.channel == channel]
        assert live == [m.id for m in stored][-8:]
        pairs = [live[n : n + 2] for n in range(0, 8, 2)]
        for first, second in pairs:  # a save's two events: one millisecond, seq + 1
            ms, seq = first.split("-")
            assert second == f"{ms}-{int(seq) + 1}"
