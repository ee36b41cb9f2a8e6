"""What only the Postgres backend has: its schema and migrations (a database of the previous
release upgraded in place), LISTEN/NOTIFY delivery (large events, a lost or silently dead LISTEN
connection), text PostgreSQL cannot store, driver errors, index-backed queries, and the lock
order of flow control. The shared behaviour is in the contract suites."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from stepstream import WorkflowContext, Workflows
from stepstream.backends import backend_from_url
from stepstream.backends.base import AcquireSlot, CreateRun, Notify, ReleaseSlot, SaveSteps
from stepstream.backends.postgres import PostgresBackend, connection, live
from stepstream.backends.postgres.connection import migrations
from stepstream.errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    RunNotFound,
    ValidationError,
)
from stepstream.records import (
    FlowLimits,
    HistoryPolicy,
    Lease,
    Message,
    RunRecord,
    RunState,
    parse_cursor,
)
from tests.backends.test_runs_contract import claim, new_run, step
from tests.conftest import free_port
from tests.workflow.helpers import wait_for_state, wait_until

pytestmark = pytest.mark.anyio

FOREVER = HistoryPolicy()


def fresh(postgres_url: str, **options: str) -> str:
    query = "&".join(
        f"{k}={v}" for k, v in {"schema": f"t_{uuid.uuid4().hex[:12]}", **options}.items()
    )
    return f"{postgres_url}?{query}"


class Sink:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.losses: list[str] = []
        self.missed_channels: list[str] = []
        self.changed = asyncio.Event()

    def deliver(self, messages: list[Message]) -> None:
        self.messages.extend(messages)
        self.changed.set()

    def lost(self, reason: str) -> None:
        self.losses.append(reason)
        self.changed.set()

    def missed(self, channels: list[str]) -> None:
        self.missed_channels.extend(channels)
        self.changed.set()

    async def until(self, condition: Any, within: float = 10) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def backend(postgres_url: str) -> AsyncIterator[PostgresBackend]:
    made = backend_from_url(fresh(postgres_url))
    assert isinstance(made, PostgresBackend)
    await made.open()
    try:
        yield made
    finally:
        await made.close()


async def test_processes_opening_a_new_schema_together_migrate_it_once(postgres_url: str) -> None:
    url = fresh(postgres_url)
    backends = [backend_from_url(url) for _ in range(6)]
    try:
        await asyncio.gather(*(b.open() for b in backends))
        conn = await asyncpg.connect(postgres_url)
        try:
            schema = url.rsplit("schema=", 1)[1]
            rows = await conn.fetch(f'SELECT version FROM "{schema}".schema_version')
        finally:
            await conn.close()
        assert sorted(r["version"] for r in rows) == [v for v, _, _ in migrations()]
        await backends[0].append("c", "t.e", "1", FOREVER)
        assert [m.raw for m in await backends[-1].read("c")] == ["1"]
    finally:
        for b in backends:
            await b.close()


async def test_a_schema_from_a_newer_stepstream_is_refused(postgres_url: str) -> None:
    url = fresh(postgres_url)
    first = backend_from_url(url)
    await first.open()
    await first.close()
    schema = url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"INSERT INTO \"{schema}\".schema_version VALUES (999, 'future')")
    finally:
        await conn.close()
    with pytest.raises(ConfigurationError, match="version 999, newer than this stepstream"):
        await backend_from_url(url).open()


async def test_schemas_are_separate_stores(postgres_url: str) -> None:
    one, two = backend_from_url(fresh(postgres_url)), backend_from_url(fresh(postgres_url))
    await one.open()
    await two.open()
    try:
        await one.append("same", "t.e", '"one"', FOREVER)
        await one.create_run(CreateRun(RunRecord("wfr_1", "w", RunState.STARTED, 1)))
        assert await two.read("same") == []
        assert await two.get_run("wfr_1") is None
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://h/db?schema=Bad-Name",
        "postgresql://h/db?pool_size=0",
        "postgresql://h/db?pool_size=many",
        "postgresql://h/db?live_check_interval=-1",
    ],
)
def test_bad_options_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        backend_from_url(url)


def test_the_password_never_shows_in_messages() -> None:
    with pytest.raises(ConfigurationError) as caught:
        backend_from_url("postgresql://app:s3cret@db.internal:5432/app?pool_size=many")
    assert "s3cret" not in str(caught.value) and "app:***@db.internal" in str(caught.value)


async def test_an_unreachable_postgres_is_unavailable_and_hides_the_password() -> None:
    backend = backend_from_url(f"postgresql://app:s3cret@127.0.0.1:{free_port()}/app")
    with pytest.raises(BackendUnavailable) as caught:
        await backend.open()
    assert "s3cret" not in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)


async def test_a_driver_error_is_a_backend_error(backend: PostgresBackend) -> None:
    with pytest.raises(BackendError) as caught:
        await backend._db.fetch("SELECT ss_no_such_function()")
    assert not isinstance(caught.value, BackendUnavailable)
    assert isinstance(caught.value.__cause__, asyncpg.PostgresError)
    assert (await backend.append("c", "t.e", "1", FOREVER)).id  # the pool goes on working


async def test_events_too_large_for_a_notify_arrive_live_in_order(
    backend: PostgresBackend,
) -> None:
    sink = Sink()
    backend.set_sink(sink)
    await backend.listen(["big"])
    large = '"' + "x" * 20_000 + '"'
    sent = [
        await backend.append("big", "t.e", raw, FOREVER) for raw in ("1", large, "2", large, "3")
    ]
    await sink.until(lambda: len(sink.messages) >= 5)
    assert [(m.id, m.raw) for m in sink.messages] == [(m.id, m.raw) for m in sent]


async def test_a_backlog_of_large_events_is_read_in_bounded_batches_in_order(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large events queued faster than they are read went to storage in one statement, however
    many: a backlog of thousands took longer than a command may, was reported missed, and held
    back every event behind it. Each read now asks for at most ``DRAIN_BATCH`` bodies."""
    monkeypatch.setattr(live, "DRAIN_BATCH", 3)
    asked: list[int] = []
    read_bodies = backend._listener._read_bodies

    async def counted(wanted: list[tuple[str, str]]) -> Any:
        asked.append(len(wanted))
        return await read_bodies(wanted)

    monkeypatch.setattr(backend._listener, "_read_bodies", counted)
    sink = Sink()
    backend.set_sink(sink)
    await backend.listen(["big"])
    large = '"' + "x" * 9000 + '"'
    datas = [large if i % 3 else str(i) for i in range(12)]
    ids = await backend._db.value(
        "SELECT ss_append($1, $2, $3, NULL, NULL)", "big", ["t.e"] * 12, datas
    )  # one commit: the twelve notifications arrive together
    await sink.until(lambda: len(sink.messages) >= 12)
    assert [(m.id, m.raw) for m in sink.messages] == list(zip(ids, datas, strict=True))
    assert asked and max(asked) <= 3 and sum(asked) == 8


async def test_a_large_event_trimmed_before_it_is_read_is_reported_missed(
    backend: PostgresBackend,
) -> None:
    sink = Sink()
    backend.set_sink(sink)
    await backend.listen(["trimmed"])
    keep_one = HistoryPolicy(max_length=1)
    # Both commit before the listener reads the first body: it is gone by then.
    await backend._db.fetch(
        "SELECT ss_append($1, $2, $3, $4, NULL)",
        "trimmed",
        ["t.e", "t.e"],
        ['"' + "x" * 9000 + '"', "2"],
        keep_one.max_length,
    )
    await sink.until(lambda: sink.missed_channels and sink.messages)
    assert sink.missed_channels == ["trimmed"]
    assert [m.raw for m in sink.messages] == ["2"]


async def test_a_killed_listen_connection_is_reported_and_listening_resumes(
    backend: PostgresBackend, postgres_url: str
) -> None:
    sink = Sink()
    backend.set_sink(sink)
    woken = asyncio.Event()
    await backend.listen(["c"])
    await backend.listen_wakeups(woken.set)
    assert backend.wakeups_active()
    conn = backend._listener._conn
    assert conn is not None
    await terminate(postgres_url, conn.get_server_pid())
    await sink.until(lambda: sink.losses)
    assert not backend.wakeups_active()
    # Subscribing again opens a new connection; delivery and wake-ups work as before.
    await backend.listen(["c"])
    await backend.listen_wakeups(woken.set)
    message = await backend.append("c", "t.e", "1", FOREVER)
    await sink.until(lambda: sink.messages)
    assert sink.messages == [message]
    await backend.wake_workers()
    await asyncio.wait_for(woken.wait(), 10)


@pytest.mark.skipif(os.geteuid() != 0, reason="signals the server's process (needs root)")
async def test_a_silently_dead_listen_connection_counts_as_lost(postgres_url: str) -> None:
    backend = backend_from_url(fresh(postgres_url, live_check_interval="0.3"))
    await backend.open()
    sink = Sink()
    backend.set_sink(sink)
    try:
        await backend.listen(["c"])
        conn = backend._listener._conn  # type: ignore[attr-defined]
        pid = conn.get_server_pid()
        os.kill(pid, signal.SIGSTOP)  # the socket stays open; nothing answers
        try:
            await sink.until(lambda: sink.losses, within=10)
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        await backend.close()


async def test_text_postgres_cannot_store_is_a_client_error(backend: PostgresBackend) -> None:
    assert await backend.get_run("wfr_\x00") is None
    with pytest.raises(RunNotFound):
        await backend.notify(Notify("e", "1", "wfr_\x00", at=1))
    with pytest.raises(ValidationError, match="NUL"):
        await backend.notify(Notify("e\x00", "1", None, at=1))
    run = RunRecord("wfr_nul", "w", RunState.STARTED, 1, error="bad \x00 byte")
    await backend.create_run(CreateRun(run))
    stored = await backend.get_run("wfr_nul")
    assert stored is not None and stored.error == "bad \ufffd byte"


async def test_no_api_query_scans_the_runs_table(backend: PostgresBackend) -> None:
    async with backend._db._pool().acquire() as conn:
        await conn.execute(
            "INSERT INTO runs (id, workflow, state, created_at, due_at, payload, headers, phase, "
            "failure_attempts) SELECT 'r' || i, 'w' || (i % 20), 'RUN_SUCCESS', i, NULL, 'null', "
            "'{}', 'run', 0 FROM generate_series(1, 20000) AS i"
        )
        await conn.execute("ANALYZE runs")
        queries = [
            "SELECT * FROM runs WHERE state = 'RUN_FAILED' ORDER BY seq DESC LIMIT 21",
            "SELECT * FROM runs WHERE workflow = 'nope' ORDER BY seq DESC LIMIT 21",
            "SELECT * FROM runs WHERE state = 'RUN_FAILED' AND workflow = 'w1' "
            "ORDER BY seq DESC LIMIT 21",
            "SELECT * FROM runs ORDER BY seq DESC LIMIT 21",
            "SELECT id FROM runs WHERE state = 'RUN_STARTED' AND lease_owner IS NULL "
            "AND due_at <= 5 AND workflow = ANY ('{w1}') ORDER BY due_at LIMIT 10",
            "SELECT id FROM runs WHERE state = 'RUN_STARTED' AND lease_owner IS NOT NULL "
            "AND lease_until < 5 AND due_at <= 5 ORDER BY lease_until LIMIT 10",
        ]
        for sql in queries:
            plan = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {sql}"))
            assert "Seq Scan on runs" not in plan, (sql, plan)


@pytest.mark.parametrize(
    "raised",
    [
        asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress"),
        asyncpg.exceptions.ConnectionDoesNotExistError(None),
    ],
    ids=["restart-on-a-pooled-connection", "closed-mid-operation"],
)
def test_connection_trouble_is_unavailable_and_says_what_happened(raised: Exception) -> None:
    from stepstream.backends.postgres.connection import map_postgres_errors

    with pytest.raises(BackendUnavailable) as caught, map_postgres_errors("PostgreSQL at h"):
        raise raised
    assert caught.value.__cause__ is raised
    assert not str(caught.value).endswith("None")


async def test_a_database_of_the_previous_release_is_upgraded_in_place(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 4 adds flow control to a schema holding runs; processes still running version 3
    keep working meanwhile (its functions stay, as overloads)."""
    url = fresh(postgres_url)
    schema = url.rsplit("schema=", 1)[1]
    shipped = migrations()
    monkeypatch.setattr(connection, "migrations", lambda: shipped[:3])
    old = backend_from_url(url)
    await old.open()
    await old.close()
    monkeypatch.setattr(connection, "migrations", lambda: shipped)
    conn = await asyncpg.connect(postgres_url, server_settings={"search_path": schema})
    try:
        await conn.execute(
            "SELECT ss_create_run('wfr_old', 'wf', 'RUN_STARTED', 1, NULL, 0, NULL, NULL, 'null', "
            "'{}', NULL, NULL, NULL, 'run', 0, NULL, '{}', '{}', '{}', '{}', '{}', '{}', "
            "'{}', '{}', '{}', NULL, NULL)"
        )
        backend = backend_from_url(url)
        await backend.open()
        try:
            (run,) = await claim(backend, "w1", 10)
            assert run.id == "wfr_old" and run.flow is None
            await conn.execute(  # a version 3 process saving a step
                "SELECT ss_save_steps('wfr_old', 'w1', $1, '{0}', '{STEP_SUCCESS}', '{f}', "
                "'{1}', '{1}', $2, '{}', '{}', '{}', NULL, NULL)",
                run.epoch,
                [step(0).to_json()],
            )
            found = await backend.get_run("wfr_old")
            assert found is not None and found.steps[0].out == "1"
            limits = FlowLimits("k", parallelism=1)
            lease = Lease("wfr_old", "w1", run.epoch)
            assert (await backend.acquire_slot(AcquireSlot(lease, limits, step(1)))).granted
        finally:
            await backend.close()
    finally:
        await conn.close()


async def _deadlocks(postgres_url: str) -> int:
    conn = await asyncpg.connect(postgres_url)
    try:
        found: int = await conn.fetchval(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
        return found
    finally:
        await conn.close()


async def test_flow_control_takes_its_locks_in_one_order(postgres_url: str) -> None:
    """A waiter acquiring again while the holder saves its step and gives the slot back lock
    the key and both runs: taken in different orders, PostgreSQL would find a deadlock (and
    roll one back after a second)."""
    backend = backend_from_url(fresh(postgres_url))
    await backend.open()
    one = FlowLimits("k", parallelism=1)
    before = await _deadlocks(postgres_url)
    try:
        for i in range(40):
            holder_id, waiter_id = f"wfr_h{i}", f"wfr_w{i}"
            for run_id in (holder_id, waiter_id):
                await backend.create_run(CreateRun(new_run(run_id)))
            runs = {run.id: run for run in await claim(backend, "w1", 10)}
            holder = Lease(holder_id, "w1", runs[holder_id].epoch)
            waiter = Lease(waiter_id, "w1", runs[waiter_id].epoch)
            assert (await backend.acquire_slot(AcquireSlot(holder, one, step(0)))).granted
            denied = await backend.acquire_slot(AcquireSlot(waiter, one, step(0)))
            assert not denied.granted
            done = step(0, out="1")
            await asyncio.gather(
                backend.acquire_slot(AcquireSlot(waiter, one, step(0))),
                backend.save_steps(
                    SaveSteps(holder, (done,), release=ReleaseSlot(holder_id, "k", 0))
                ),
            )
            await backend.release_slot(ReleaseSlot(waiter_id, "k", 0))
    finally:
        await backend.close()  # its sessions end: their statistics are flushed
    await asyncio.sleep(0.5)
    assert await _deadlocks(postgres_url) == before


class Heard:
    """The payloads NOTIFY sends on ``topic``, heard by a plain asyncpg connection."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.changed = asyncio.Event()

    def __call__(self, *args: Any) -> None:
        self.payloads.append(args[3])
        self.changed.set()

    async def until(self, count: int) -> list[str]:
        async with asyncio.timeout(10):
            while len(self.payloads) < count:
                self.changed.clear()
                await self.changed.wait()
        return [p.split("\n")[0] + ":" + p.split("\n")[3] for p in self.payloads]


async def test_only_watched_channels_are_notified(
    backend: PostgresBackend, postgres_url: str
) -> None:
    """Appends to a channel nobody watches send no NOTIFY (whose commit lock would serialize
    every step's commit); a watched one's do, and an append by a process of an earlier version
    (no ``stepstream.notify`` setting) notifies whatever it appends."""
    heard = Heard()
    conn = await asyncpg.connect(postgres_url)
    await conn.add_listener(backend._listener.topic, heard)
    old = await asyncpg.connect(postgres_url, server_settings={"search_path": backend._db.schema})
    try:
        await backend.append("quiet", "t.e", "1", FOREVER)
        sink = Sink()
        backend.set_sink(sink)
        await backend.listen(["loud"])
        loud = await backend.append("loud", "t.e", "2", FOREVER)
        await sink.until(lambda: sink.messages)
        assert sink.messages == [loud]
        await old.fetch("SELECT ss_append('quiet', '{t.e}', '{3}', NULL, NULL)")
        await heard.until(2)
        await backend.append("quiet", "t.e", "4", FOREVER)
        await backend.append("loud", "t.e", "5", FOREVER)
        assert await heard.until(3) == ["loud:2", "quiet:3", "loud:5"]
    finally:
        await old.close()
        await conn.close()


async def _race_a_watch(backend: PostgresBackend, channel: str) -> None:
    sink = Sink()
    backend.set_sink(sink)
    sent: list[Message] = []
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            sent.append(await backend.append(channel, "t.e", str(len(sent)), FOREVER))

    writers = [asyncio.create_task(writer()) for _ in range(3)]
    await asyncio.sleep(0.02)
    await backend.listen([channel])
    history = await backend.read(channel)
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*writers)
    wanted = {m.id for m in sent}  # all of them: replies come back out of id order

    def covered() -> bool:
        return wanted <= {m.id for m in history} | {m.id for m in sink.messages}

    with contextlib.suppress(TimeoutError):  # what is still missing is reported below
        await sink.until(lambda: covered() or sink.losses)
    # A connection reported lost (a slow check under load) hands catching up to the subscriber:
    # say so rather than report it as a broken handover.
    assert not sink.losses, f"the LISTEN connection was reported lost: {sink.losses}"
    assert not sink.missed_channels
    seen = {m.id for m in history} | {m.id for m in sink.messages}
    unseen = [m.id for m in sent if m.id not in seen]
    assert not unseen, (
        f"{channel}: {unseen} in neither the history ({[m.id for m in history][-3:]} last) "
        f"nor live ({[m.id for m in sink.messages][:3]} first)"
    )
    await backend.unlisten([channel])


async def test_events_appended_while_a_watch_begins_are_never_lost(
    backend: PostgresBackend,
) -> None:
    """A subscriber's history read after ``listen`` returns plus what arrives live covers every
    event appended meanwhile by writers racing the watch."""
    for attempt in range(5):
        await _race_a_watch(backend, f"race{attempt}")


async def test_watches_left_unrenewed_count_as_a_lost_connection(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process whose loop was frozen past its watches' renewal may have missed unannounced
    events: it reports the connection lost, so subscribers catch up from storage."""
    monkeypatch.setattr(live, "RENEW_INTERVAL", 3600.0)
    monkeypatch.setattr(live, "RENEW_LIMIT", 0.2)
    backend = backend_from_url(fresh(postgres_url, live_check_interval="0.3"))
    await backend.open()
    sink = Sink()
    backend.set_sink(sink)
    try:
        await backend.listen(["c"])
        await sink.until(lambda: sink.losses, within=10)
        assert "unrenewed" in sink.losses[0]
    finally:
        await backend.close()


async def test_a_deleted_run_keeps_the_watch_on_its_channel(
    backend: PostgresBackend, postgres_url: str
) -> None:
    sink = Sink()
    backend.set_sink(sink)
    await backend.listen(["wfr_gone"])
    run = RunRecord("wfr_gone", "w", RunState.SUCCESS, 1, completed_at=2)
    await backend.create_run(CreateRun(run))
    await backend.append("wfr_gone", "t.e", "1", FOREVER)
    await backend.delete_run("wfr_gone")
    assert await backend.read("wfr_gone") == []
    again = await backend.append("wfr_gone", "t.e", "2", FOREVER)
    await sink.until(lambda: again in sink.messages)


async def test_more_calls_at_once_than_connections_all_complete(postgres_url: str) -> None:
    """Connections kept between calls go to calls waiting in the pool, never sit idle while
    one waits (the kept-connection fast path once held them back: 30 appends on 2
    connections hung)."""
    backend = backend_from_url(fresh(postgres_url, pool_size="2"))
    await backend.open()
    try:
        policy = HistoryPolicy(max_length=5)
        async with asyncio.timeout(20):
            appended = await asyncio.gather(
                *(backend.append("c", "t.e", str(i), policy) for i in range(30))
            )
        assert len({m.id for m in appended}) == 30
    finally:
        async with asyncio.timeout(20):
            await backend.close()  # kept connections are given back: close does not hang


async def test_a_kept_connection_the_server_closed_is_not_used_again(
    backend: PostgresBackend, postgres_url: str
) -> None:
    await backend._db.fetch("SELECT 1")
    ((kept, _),) = backend._db._idle
    pid = kept.get_server_pid()
    await terminate(postgres_url, pid)
    # The first call after may still meet the dead connection (before the driver noticed):
    # then it fails as unavailable, and the pool replaces the connection.
    with contextlib.suppress(BackendUnavailable):
        await backend._db.fetch("SELECT 1")
    assert await backend._db.value("SELECT pg_backend_pid()") != pid
    assert (await backend.append("c", "t.e", "1", FOREVER)).id


async def test_a_call_cancelled_midway_leaves_no_connection_behind(
    backend: PostgresBackend,
) -> None:
    call = asyncio.ensure_future(backend._db.fetch("SELECT pg_sleep(5)"))
    await asyncio.sleep(0.3)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert backend._db._idle == []  # given back to the pool, which waits out the cancel
    async with asyncio.timeout(10):
        assert await backend._db.value("SELECT 1") == 1


async def test_ids_run_on_alike_whichever_way_an_append_goes(backend: PostgresBackend) -> None:
    """ss_append's one-statement way (migration 10: the channel exists, no expiry passed, no
    trimming) and its full one hand out ids that run on from each other: strictly increasing,
    the events of one call in one millisecond, seq 0 in a new millisecond, else the last + 1."""
    batches = [  # (events, max_length): new channel, fits, trims, trims, unlimited again, ...
        (2, 4),
        (2, 4),
        (1, 4),
        (3, 4),
        (2, None),
        (1, None),
        (5, 6),
        (1, 6),
        (4, None),
    ] * 5
    ids: list[str] = []
    for count, max_length in batches:
        made = await backend._db.value(
            "SELECT ss_append($1, $2, $3, $4, NULL)",
            "c",
            ["t.e"] * count,
            [json.dumps({"n": len(ids) + i}) for i in range(count)],
            max_length,
        )
        assert len({i.split("-")[0] for i in made}) == 1  # one millisecond per call
        ids += made
    keys = [parse_cursor(i) for i in ids]
    for (ms, seq), (next_ms, next_seq) in itertools.pairwise(keys):
        assert (next_ms, next_seq) == (ms, seq + 1) or (next_ms > ms and next_seq == 0)
    stored = await backend.read("c", limit=100)
    assert len(stored) == 10  # trimmed to 6 by the last limited call, then 4 more
    assert [m.id for m in stored] == ids[-10:]
    assert [json.loads(m.raw)["n"] for m in stored] == list(range(len(ids)))[-10:]


async def test_connections_kept_but_unused_go_back_to_the_pool(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst leaves several connections kept; those the calls after it no longer need go
    back to the pool (which closes them once idle), not held for the life of the process."""
    monkeypatch.setattr(connection, "KEEP_IDLE", 0.2)
    await asyncio.gather(*(backend._db.fetch("SELECT pg_sleep(0.05)") for _ in range(3)))
    assert len(backend._db._idle) == 3
    await asyncio.sleep(0.3)
    for _ in range(3):  # one at a time: one connection is enough
        await backend._db.fetch("SELECT 1")
    assert len(backend._db._idle) == 1


async def test_a_read_whose_connection_is_killed_midway_runs_again_a_write_does_not(
    backend: PostgresBackend, postgres_url: str
) -> None:
    """A session killer (``pg_terminate_backend``) ends a statement in the middle: a read is
    run again on another connection and answers; a write fails as unavailable, since whether it
    took effect is unknown (its caller decides: a worker hands its run back)."""

    async def killed_midway(read: bool) -> Any:
        call = asyncio.ensure_future(
            backend._db.value(
                "SELECT pg_backend_pid() FROM pg_sleep(CASE WHEN $1 THEN 0.6 ELSE 0 END)",
                True,
                read=read,
            )
        )
        admin = await asyncpg.connect(postgres_url)
        try:
            async with asyncio.timeout(10):
                while True:  # the call's session, once it sleeps
                    pid = await admin.fetchval(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                        "AND query LIKE '%pg_backend_pid() FROM pg_sleep%'"
                    )
                    if pid is not None:
                        break
                    await asyncio.sleep(0.02)
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        return pid, call

    pid, call = await killed_midway(read=True)
    async with asyncio.timeout(10):
        assert await call != pid  # answered, from another session
    _, call = await killed_midway(read=False)
    with pytest.raises(BackendUnavailable):
        await call


async def session_in(backend: Any, postgres_url: str) -> asyncpg.Connection:
    """A connection of this test's own to ``backend``'s database, in its schema: transactions
    beside the backend's (a save holding a run's row, a claim in flight)."""
    assert isinstance(backend, PostgresBackend)
    return await asyncpg.connect(postgres_url, server_settings={"search_path": backend._db.schema})


async def terminate(postgres_url: str, pid: int) -> None:
    """End the server session ``pid`` as an administrator's ``pg_terminate_backend`` would."""
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def test_renewing_leases_takes_part_in_no_lock_cycle(postgres_url: str) -> None:
    """A save that gives a flow control slot back locks its own run, then the waiter it wakes.
    A heartbeat of the worker holding both used to lock them in id order in one transaction,
    waiting for each: with the waiter's id first, each transaction waited for the other until
    PostgreSQL rolled one back (40P01, after a second). Now the heartbeat passes over the run
    the save holds, and then renews that run alone, waiting for the save's end."""
    url = fresh(postgres_url)
    backend = backend_from_url(url)
    await backend.open()
    one = FlowLimits("k", parallelism=1)
    conn = await session_in(backend, postgres_url)
    before = await _deadlocks(postgres_url)
    try:
        for run_id in ("wfr_a_waiter", "wfr_b_holder"):
            await backend.create_run(CreateRun(new_run(run_id)))
        runs = {run.id: run for run in await claim(backend, "w1", 10)}
        waiter = Lease("wfr_a_waiter", "w1", runs["wfr_a_waiter"].epoch)
        holder = Lease("wfr_b_holder", "w1", runs["wfr_b_holder"].epoch)
        assert (await backend.acquire_slot(AcquireSlot(holder, one, step(0)))).granted
        assert not (await backend.acquire_slot(AcquireSlot(waiter, one, step(0)))).granted
        saving = conn.transaction()
        await saving.start()
        await conn.execute("SELECT 1 FROM runs WHERE id = 'wfr_b_holder' FOR UPDATE")  # fenced
        heartbeat = asyncio.create_task(backend.renew_leases([waiter, holder], 30_000))
        await asyncio.sleep(0.3)  # it has done what it does before the save goes on
        async with asyncio.timeout(5):  # the save gives its slot back: locks the waiter
            await conn.fetchval("SELECT ss_free_slot('k', 'wfr_b_holder', 0)")
        assert not heartbeat.done()  # the holder's renewal waits for the save's end
        await saving.commit()
        assert sorted(await heartbeat) == ["wfr_a_waiter", "wfr_b_holder"]
    finally:
        await conn.close()
        await backend.close()
    await asyncio.sleep(0.5)
    assert await _deadlocks(postgres_url) == before


async def test_a_lease_renewed_while_a_claim_takes_the_run_over_is_lost(postgres_url: str) -> None:
    """A renewal arriving while another worker's claim holds the run's row (its lease ran out)
    answers what that claim decided: not held, at once, rather than still held."""
    url = fresh(postgres_url)
    backend = backend_from_url(url)
    await backend.open()
    conn = await session_in(backend, postgres_url)
    try:
        await backend.create_run(CreateRun(new_run("wfr_r1")))
        (run,) = await claim(backend, "w1", 10, lease_ms=1)
        stale = Lease("wfr_r1", "w1", run.epoch)
        await asyncio.sleep(0.01)  # its lease has run out
        taking = conn.transaction()
        await taking.start()
        (taken,) = await conn.fetch("SELECT id FROM ss_claim('w2', 30000, 10, '{wf}', '{}')")
        assert taken["id"] == "wfr_r1"
        renewal = asyncio.create_task(backend.renew_leases([stale], 30_000))
        await asyncio.sleep(0.3)
        assert not renewal.done()  # waits for the claim's end
        await taking.commit()
        assert await renewal == []
    finally:
        await conn.close()
        await backend.close()


async def test_renewals_waiting_for_locked_runs_leave_the_pool_to_others(postgres_url: str) -> None:
    """The runs a renewal finds locked (a group save holds up to 100) are renewed one at a
    time: however many they are, one connection waits, and the process's other calls go on."""
    url = fresh(postgres_url, pool_size="2")
    backend = backend_from_url(url)
    await backend.open()
    conn = await session_in(backend, postgres_url)
    try:
        ids = [f"wfr_{i}" for i in range(6)]
        for run_id in ids:
            await backend.create_run(CreateRun(new_run(run_id)))
        leases = [Lease(run.id, "w1", run.epoch) for run in await claim(backend, "w1", 10)]
        saving = conn.transaction()
        await saving.start()
        await conn.execute("SELECT 1 FROM runs WHERE id = ANY($1) FOR UPDATE", ids[1:])
        renewal = asyncio.create_task(backend.renew_leases(leases, 30_000))
        await asyncio.sleep(0.3)
        async with asyncio.timeout(5):  # not behind the renewals: a connection is left
            assert await backend.get_run(ids[0]) is not None
        assert not renewal.done()
        await saving.commit()
        assert sorted(await renewal) == ids
    finally:
        await conn.close()
        await backend.close()


async def test_a_locked_run_never_holds_up_the_renewal_of_another(postgres_url: str) -> None:
    """Runs a renewal found locked each wait for their own lock only: one held for long (an
    operator's open transaction) does not keep another, whose lock goes at once, unrenewed."""
    url = fresh(postgres_url)
    backend = backend_from_url(url)
    await backend.open()
    long = await session_in(backend, postgres_url)
    short = await session_in(backend, postgres_url)
    try:
        for run_id in ("wfr_0", "wfr_1", "wfr_2"):
            await backend.create_run(CreateRun(new_run(run_id)))
        runs = {run.id: run for run in await claim(backend, "w1", 10, lease_ms=5_000)}
        leases = [Lease(run_id, "w1", runs[run_id].epoch) for run_id in ("wfr_1", "wfr_2")]
        held = long.transaction()
        await held.start()
        await long.execute("SELECT 1 FROM runs WHERE id = 'wfr_1' FOR UPDATE")
        brief = short.transaction()
        await brief.start()
        await short.execute("SELECT 1 FROM runs WHERE id = 'wfr_2' FOR UPDATE")
        renewal = asyncio.create_task(backend.renew_leases(leases, 600_000))
        await asyncio.sleep(0.2)
        await brief.commit()  # wfr_2's lock goes; wfr_1's stays

        async def lease_left(run_id: str) -> int:
            found: int = await short.fetchval(
                "SELECT lease_until - ss_now() FROM runs WHERE id = $1", run_id
            )
            return found

        async with asyncio.timeout(10):  # renewed for 600 s once its lock went
            while (left := await lease_left("wfr_2")) < 60_000:
                assert left > 0, "wfr_2's lease ran out unrenewed"
                await asyncio.sleep(0.05)
        assert await lease_left("wfr_1") < 60_000 and not renewal.done()
        await held.commit()
        assert sorted(await renewal) == ["wfr_1", "wfr_2"]
    finally:
        await long.close()
        await short.close()
        await backend.close()


async def test_a_renewal_that_waited_for_a_lock_renews_from_the_end_of_the_wait(
    postgres_url: str,
) -> None:
    """A renewal waiting for a run's row (locked, not changed, by another transaction) for
    longer than the lease used to store the lease it computed before the wait, already over,
    and answer "held": the next claim took the run over while its worker went on."""
    url = fresh(postgres_url)
    backend = backend_from_url(url)
    await backend.open()
    conn = await session_in(backend, postgres_url)
    try:
        await backend.create_run(CreateRun(new_run("wfr_r1")))
        (run,) = await claim(backend, "w1", 10, lease_ms=60_000)
        lease = Lease("wfr_r1", "w1", run.epoch)
        holding = conn.transaction()
        await holding.start()
        await conn.execute("SELECT 1 FROM runs WHERE id = 'wfr_r1' FOR UPDATE")
        renewal = asyncio.create_task(backend.renew_leases([lease], 500))
        await asyncio.sleep(1.0)  # twice the lease
        assert not renewal.done()
        await holding.commit()
        async with asyncio.timeout(5):
            assert await renewal == ["wfr_r1"]
        left = await conn.fetchval("SELECT lease_until - ss_now() FROM runs WHERE id = 'wfr_r1'")
        assert left > 250, f"renewed to {left} ms from now, not the lease's 500"
        assert await claim(backend, "w2", 10) == []
    finally:
        await conn.close()
        await backend.close()


def _locking_workflows(
    url: str, ran: Counter[str], gate: asyncio.Event, go_on: asyncio.Event
) -> Workflows:
    """``hold`` runs a step, waits for ``gate``, then ends (a write of its run's row); ``long``
    runs a step that waits for ``go_on``. ``ran`` counts the step bodies begun, by run."""
    workflows = Workflows(backend=url)

    @workflows.workflow("hold")
    async def hold(context: WorkflowContext) -> None:
        await context.run("body", lambda: ran.update([context.workflow_run_id]))
        await gate.wait()

    @workflows.workflow("long")
    async def long(context: WorkflowContext) -> None:
        async def body() -> None:
            ran[context.workflow_run_id] += 1
            await go_on.wait()

        await context.run("body", body)

    return workflows


@pytest.mark.parametrize("locked", [1, 8])
async def test_runs_locked_for_long_keep_no_other_run_from_its_lease(
    postgres_url: str, locked: int
) -> None:
    """A worker's heartbeat never waits for a run, nor for a connection. With runs' rows held
    by an open transaction (an operator's) for several leases, and this worker's writes of
    them waiting, each on a connection of the pool (10), its other run keeps its lease: a
    second worker (another process) never takes it over, and its body runs once."""
    url = fresh(postgres_url)
    ran: Counter[str] = Counter()
    gate, go_on = asyncio.Event(), asyncio.Event()
    workflows = _locking_workflows(url, ran, gate, go_on)
    elsewhere = _locking_workflows(url, ran, gate, go_on)
    client = workflows.client()
    held = [f"wfr_a{i}" for i in range(locked)]
    await client.trigger("long", workflow_run_id="b")
    for run_id in held:
        await client.trigger("hold", workflow_run_id=run_id.removeprefix("wfr_"))
    worker = workflows.worker(lease=0.6, poll_interval=0.05, concurrency=locked + 1)
    other = elsewhere.worker(lease=0.6, poll_interval=0.05, concurrency=locked + 1)
    await worker.start()
    conn = await session_in(workflows.backend, postgres_url)
    try:
        await wait_until(lambda: _true(len(ran) == locked + 1), what="every body to start")
        await other.start()
        operator = conn.transaction()
        await operator.start()
        await conn.execute("SELECT 1 FROM runs WHERE id = ANY($1) FOR UPDATE", held)
        gate.set()  # the held runs end: their writes wait for the operator
        low = 600
        for _ in range(40):  # 2 s: over three leases
            await asyncio.sleep(0.05)
            async with asyncio.timeout(5):
                left = "SELECT lease_until - ss_now() FROM runs WHERE id = 'wfr_b'"
                low = min(low, await conn.fetchval(left))
        await operator.commit()
        assert low > 0, f"wfr_b's lease ran out ({low} ms) while {locked} runs were locked"
        go_on.set()
        for run_id in ["wfr_b", *held]:
            assert (await wait_for_state(client, run_id))["workflowState"] == "RUN_SUCCESS"
        assert ran["wfr_b"] == 1
    finally:
        gate.set()
        go_on.set()
        await conn.close()
        await worker.stop(grace=5)
        await other.stop(grace=5)
        await workflows.aclose()
        await elsewhere.aclose()


async def _true(value: bool) -> bool:
    return value


async def test_a_heartbeat_gets_a_connection_when_every_other_waits_for_a_lock(
    postgres_url: str,
) -> None:
    """The pool keeps one connection beyond ``pool_size`` for a worker's heartbeat: with
    every turn taken by calls waiting for rows an open transaction holds, it still answers."""
    url = fresh(postgres_url, pool_size="1")
    backend = backend_from_url(url)
    await backend.open()
    assert isinstance(backend, PostgresBackend)
    conn = await session_in(backend, postgres_url)
    try:
        ids = ("wfr_locked", "wfr_free")
        for run_id in ids:
            await backend.create_run(CreateRun(new_run(run_id)))
        runs = {run.id: run for run in await claim(backend, "w1", 10)}
        locked, free = (Lease(run_id, "w1", runs[run_id].epoch) for run_id in ids)
        operator = conn.transaction()
        await operator.start()
        await conn.execute("SELECT 1 FROM runs WHERE id = 'wfr_locked' FOR UPDATE")
        waiting = asyncio.create_task(backend.renew_leases([locked], 30_000))
        await asyncio.sleep(0.3)  # it holds the one turn, waiting for the row
        async with asyncio.timeout(5):
            assert await backend.renew_leases_now([free, locked], 30_000) == (
                ["wfr_free"],
                [locked],
            )
        await operator.commit()
        assert await waiting == ["wfr_locked"]
    finally:
        await conn.close()
        await backend.close()


def test_a_backend_reopened_under_another_event_loop_works(postgres_url: str) -> None:
    """Closed, then opened again under another ``asyncio.run`` (a loop per test, per job):
    its locks and turns were made once and, where calls had waited for them under the first
    loop, refused the second ("bound to a different event loop")."""
    url = fresh(postgres_url, pool_size="1")
    backend = backend_from_url(url)
    assert isinstance(backend, PostgresBackend)

    async def use(turn: int) -> None:
        await asyncio.gather(backend.open(), backend.open())  # the second waits for the first
        conn = await session_in(backend, postgres_url)
        try:
            await asyncio.gather(backend.listen(["a"]), backend.listen(["b"]))
            ids = [f"wfr_{turn}_{i}" for i in range(2)]
            for run_id in ids:
                await backend.create_run(CreateRun(new_run(run_id)))
            leases = [Lease(run.id, "w1", run.epoch) for run in await claim(backend, "w1", 10)]
            operator = conn.transaction()
            await operator.start()
            await conn.execute("SELECT 1 FROM runs WHERE id = ANY($1) FOR UPDATE", ids)
            renewal = asyncio.create_task(backend.renew_leases(leases, 30_000))  # two wait
            reads = [asyncio.create_task(backend.get_run(run_id)) for run_id in ids * 2]
            await asyncio.sleep(0.3)
            await operator.commit()
            async with asyncio.timeout(10):
                assert sorted(await renewal) == ids
                assert all(run is not None for run in await asyncio.gather(*reads))
        finally:
            await conn.close()
            await backend.close()

    for turn in range(2):
        asyncio.run(use(turn))


async def test_a_call_cancelled_twice_gives_its_turn_back_with_its_connection(
    postgres_url: str,
) -> None:
    """A call's turn goes back only once its connection is back in the pool, even when it is
    cancelled again while asyncpg finishes the first cancellation (anyio cancels a streaming
    request twice): otherwise the next call takes the turn and opens one more connection."""
    backend = backend_from_url(fresh(postgres_url, pool_size="1"))
    await backend.open()
    assert isinstance(backend, PostgresBackend)
    db = backend._db
    try:
        await db.fetch("SELECT 1")
        call = asyncio.create_task(db.fetch("SELECT pg_sleep(0.5)"))
        await asyncio.sleep(0.1)
        call.cancel()
        for _ in range(3):
            await asyncio.sleep(0)  # the call's release of its connection begins
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await db.fetch("SELECT 1")
        assert db.pool is not None and db.pool.get_size() == 1
    finally:
        await backend.close()


async def _watch_while_the_row_is_held(
    postgres_url: str, during: Callable[[PostgresBackend], Awaitable[None]]
) -> tuple[Sink, list[Message], list[Message]]:
    """``listen(["X"])`` while another session holds channel X's row (its registration waits
    for it), ``during`` that wait; then appends to X and to a channel watched before. The sink,
    what was appended, and what of it arrived live."""
    backend = backend_from_url(fresh(postgres_url, live_check_interval="0.8"))
    await backend.open()
    assert isinstance(backend, PostgresBackend)
    sink = Sink()
    backend.set_sink(sink)
    conn = await session_in(backend, postgres_url)
    try:
        await backend.listen(["before"])
        await backend.append("X", "t.e", "0", FOREVER)
        operator = conn.transaction()
        await operator.start()
        await conn.execute("SELECT 1 FROM channels WHERE name = 'X' FOR UPDATE")
        watching = asyncio.create_task(backend.listen(["X"]))
        await asyncio.sleep(0.2)
        await during(backend)
        await asyncio.sleep(2.6)  # over three of the watchdog's checks
        await operator.commit()
        async with asyncio.timeout(10):
            await watching
        sent = [await backend.append(c, "t.e", "1", FOREVER) for c in ("X", "X", "before")]
        with contextlib.suppress(TimeoutError):  # ids are per channel: compare both
            await sink.until(lambda: all(m in sink.messages for m in sent), 5)
        return sink, sent, [m for m in sink.messages if m in sent]
    finally:
        await conn.close()
        await backend.close()


async def test_a_watch_waiting_for_a_channel_row_is_not_a_lost_connection(
    postgres_url: str,
) -> None:
    """The watchdog timed its wait for the lock a watch held as the connection's answer: a
    registration waiting for a row past ``live_check_interval`` reported the connection lost,
    and the watch then returned on no connection at all, deaf to every later event."""

    async def nothing(backend: PostgresBackend) -> None:
        return None

    sink, sent, live = await _watch_while_the_row_is_held(postgres_url, nothing)
    assert sink.losses == []
    assert live == sent


async def test_a_watch_whose_connection_is_lost_while_it_registers_listens_on_a_new_one(
    postgres_url: str,
) -> None:
    """The connection really lost while the watch waits: the loss is reported, and the watch
    returns only once it listens on a new connection, its channels registered there."""

    async def kill_the_listener(backend: PostgresBackend) -> None:
        listening = backend._listener._conn
        assert listening is not None
        await terminate(postgres_url, listening.get_server_pid())

    sink, sent, live = await _watch_while_the_row_is_held(postgres_url, kill_the_listener)
    assert len(sink.losses) == 1, sink.losses
    assert [m for m in live if m.channel == "X"] == sent[:2]


async def test_calls_past_the_servers_connection_limit_wait_for_a_connection(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL refusing one more connection (``max_connections``, a role's limit: 53300)
    while this process holds some: a call waits for one of those instead of failing (a
    worker's failed save ran its step's body again, up to 83 times for one step under load),
    and the log says once how to fix it."""
    role = f"few_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(postgres_url)
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
        await admin.execute(f'GRANT CREATE ON DATABASE "{parts.path.lstrip("/")}" TO {role}')
    finally:
        await admin.close()
    as_role = parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}").geturl()
    backend = backend_from_url(fresh(as_role, pool_size="8"))
    await backend.open()
    try:
        async with asyncio.timeout(30):
            appended = await asyncio.gather(
                *(backend.append(f"c{i % 3}", "t.e", str(i), FOREVER) for i in range(60))
            )
        assert len({(m.channel, m.id) for m in appended}) == 60
        assert "lower ?pool_size= or raise max_connections" in caplog.text
    finally:
        await backend.close()


async def test_the_url_may_name_the_process_in_pg_stat_activity(postgres_url: str) -> None:
    """Servers and workers all showed as ``stepstream``: ``?application_name=`` tells them
    apart (PostgreSQL's own connection parameter, passed through)."""
    for url, name in (
        (fresh(postgres_url), "stepstream"),
        (fresh(postgres_url, application_name="stepstream-worker-2"), "stepstream-worker-2"),
    ):
        backend = backend_from_url(url)
        assert isinstance(backend, PostgresBackend)
        await backend.open()
        try:
            assert await backend._db.value("SELECT current_setting('application_name')") == name
        finally:
            await backend.close()
