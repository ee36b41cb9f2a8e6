"""One contract, every backend: each test runs in memory, on SQLite and on a real Redis."""

from __future__ import annotations

import asyncio
import json

import pytest

from stepstream import CursorUnavailable, HistoryPolicy
from stepstream.backends import Backend, backend_from_url
from stepstream.records import Message, parse_cursor
from tests.conftest import STORES

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend_url", STORES, indirect=True)]

FOREVER = HistoryPolicy()


class Collector:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lost_reasons: list[str] = []
        self.missed_channels: list[str] = []
        self.arrived = asyncio.Event()

    def deliver(self, messages: list[Message]) -> None:
        self.messages.extend(messages)
        self.arrived.set()

    def lost(self, reason: str) -> None:
        self.lost_reasons.append(reason)

    def missed(self, channels: list[str]) -> None:
        self.missed_channels.extend(channels)
        self.arrived.set()

    async def wait_for(self, count: int) -> list[Message]:
        async with asyncio.timeout(10):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages


async def emit(
    backend: Backend, channel: str, n: int, policy: HistoryPolicy = FOREVER
) -> list[str]:
    return [
        (await backend.append(channel, "t.e", json.dumps({"n": i}), policy)).id for i in range(n)
    ]


async def test_ids_are_cursors_strictly_increasing(backend: Backend) -> None:
    ids = await emit(backend, "c", 50)
    keys = [parse_cursor(i) for i in ids]
    assert keys == sorted(keys)
    assert len(set(keys)) == 50


async def test_concurrent_appends_get_distinct_increasing_ids(backend: Backend) -> None:
    results = await asyncio.gather(*(emit(backend, "c", 25) for _ in range(8)))
    ids = [i for batch in results for i in batch]
    assert len(set(ids)) == 200
    stored = await backend.read("c")
    assert [m.id for m in stored] == sorted(ids, key=parse_cursor)


async def test_read_is_oldest_first_and_limit_keeps_the_latest(backend: Backend) -> None:
    ids = await emit(backend, "c", 10)
    everything = await backend.read("c")
    assert [m.id for m in everything] == ids
    assert [m.data["n"] for m in everything] == list(range(10))
    latest = await backend.read("c", limit=3)
    assert [m.data["n"] for m in latest] == [7, 8, 9]


async def test_read_after_cursor_is_exclusive(backend: Backend) -> None:
    ids = await emit(backend, "c", 5)
    after = await backend.read("c", after=parse_cursor(ids[1]))
    assert [m.id for m in after] == ids[2:]
    assert await backend.read("c", after=parse_cursor(ids[-1])) == []


async def test_read_by_time_range(backend: Backend) -> None:
    first = await emit(backend, "c", 3)
    await asyncio.sleep(0.02)
    second = await emit(backend, "c", 3)
    start_ms = parse_cursor(second[0])[0]
    assert [m.id for m in await backend.read("c", start_ms=start_ms)] == second
    end_ms = parse_cursor(first[-1])[0]
    assert [m.id for m in await backend.read("c", end_ms=end_ms)] == first


async def test_channels_are_independent(backend: Backend) -> None:
    await emit(backend, "a", 3)
    await emit(backend, "b", 2)
    assert len(await backend.read("a")) == 3
    assert len(await backend.read("b")) == 2
    assert await backend.read("nothing-here") == []
    assert await backend.latest_id("nothing-here") is None


async def test_latest_id(backend: Backend) -> None:
    ids = await emit(backend, "c", 4)
    assert await backend.latest_id("c") == ids[-1]


async def test_trim_by_length_keeps_last_n_and_flags_old_cursors(backend: Backend) -> None:
    policy = HistoryPolicy(max_length=5)
    ids = await emit(backend, "c", 12, policy)
    kept = await backend.read("c")
    assert [m.id for m in kept] == ids[-5:]
    # A cursor whose successor survived is still good ...
    assert [m.id for m in await backend.read("c", after=parse_cursor(ids[6]))] == ids[7:]
    # ... one whose successor was trimmed is not.
    with pytest.raises(CursorUnavailable) as info:
        await backend.read("c", after=parse_cursor(ids[3]))
    assert info.value.channel == "c"
    assert ids[3] in str(info.value)


async def test_trim_by_age_expires_the_whole_history(backend: Backend) -> None:
    policy = HistoryPolicy(expire_after=1.0)  # a loaded machine's stall stays well below
    ids = await emit(backend, "c", 3, policy)
    assert len(await backend.read("c")) == 3
    await asyncio.sleep(1.5)
    assert await backend.read("c") == []
    with pytest.raises(CursorUnavailable):
        await backend.read("c", after=parse_cursor(ids[0]))
    # The channel lives on after expiry, and its ids keep increasing.
    again = await emit(backend, "c", 1, policy)
    assert parse_cursor(again[0]) > parse_cursor(ids[-1])
    assert [m.id for m in await backend.read("c")] == again


async def test_every_emit_refreshes_expiry(backend: Backend) -> None:
    # 1.5 s in all, past the expiry; each gap leaves 0.75 s to spare for a loaded machine's
    # stalls (0.5 s and gaps of 0.2 s failed once in CI: two backends at the same moment).
    policy = HistoryPolicy(expire_after=1.0)
    for _ in range(6):
        await emit(backend, "c", 1, policy)
        await asyncio.sleep(0.25)
    assert len(await backend.read("c")) == 6


async def test_live_delivery_reaches_another_instance(backend_url: str) -> None:
    """Two backend objects on one store behave like two processes."""
    listener, emitter = backend_from_url(backend_url), backend_from_url(backend_url)
    sink = Collector()
    listener.set_sink(sink)
    try:
        await listener.open()
        await emitter.open()
        await listener.listen(["c"])
        ids = await emit(emitter, "c", 20)
        await emit(emitter, "other", 3)
        got = await sink.wait_for(20)
        assert [m.id for m in got] == ids
        assert {m.channel for m in got} == {"c"}
        await listener.unlisten(["c"])
        await emit(emitter, "c", 2)
        await asyncio.sleep(0.1)
        assert len(sink.messages) == 20
    finally:
        await listener.close()
        await emitter.close()


async def test_live_delivery_in_the_same_instance(backend: Backend) -> None:
    sink = Collector()
    backend.set_sink(sink)
    await backend.listen(["c"])
    ids = await emit(backend, "c", 5)
    assert [m.id for m in await sink.wait_for(5)] == ids


async def test_message_data_round_trips(backend: Backend) -> None:
    payload = {"text": "héllo\nworld", "nested": {"list": [1, 2.5, None, True]}}
    await backend.append("c", "t.e", json.dumps(payload), FOREVER)
    (message,) = await backend.read("c")
    assert message.data == payload
    assert message.event == "t.e"
    assert message.channel == "c"


async def test_odd_channel_names(backend: Backend) -> None:
    for name in ["with space", "braces{}x", "ünïcode", "a:b:c", "x" * 200]:
        await emit(backend, name, 1)
        assert [m.channel for m in await backend.read(name)] == [name]


async def test_read_pages_forward_and_backward(backend: Backend) -> None:
    ids = await emit(backend, "c", 12)
    assert [m.id for m in await backend.read("c", page=5)] == ids[:5]
    assert [m.id for m in await backend.read("c", after=parse_cursor(ids[4]), page=5)] == ids[5:10]
    assert [m.id for m in await backend.read("c", after=parse_cursor(ids[9]), page=5)] == ids[10:]
    assert [m.id for m in await backend.read("c", before=parse_cursor(ids[7]), limit=3)] == ids[4:7]
    assert [m.id for m in await backend.read("c", before=parse_cursor(ids[7]))] == ids[:7]
    assert await backend.read("c", before=parse_cursor(ids[0]), limit=3) == []
    assert await backend.read("c", before=(0, 0)) == []


def slow_poller(url: str) -> str:
    """A listener that looks for other processes' commits only every 5 s (SQLite polls; Redis
    pushes and takes the URL unchanged). Any call on it (``latest_id``) makes it look now."""
    return f"{url}?poll_interval=5" if url.startswith("sqlite:") else url


async def delivered_or_missed(sink: Collector, channel: str, last: str) -> list[str]:
    """Wait until ``last`` arrives; the ids delivered on ``channel``, checked for order."""
    async with asyncio.timeout(10):
        while last not in [m.id for m in sink.messages]:
            sink.arrived.clear()
            await sink.arrived.wait()
    got = [m.id for m in sink.messages if m.channel == channel]
    assert got == sorted(set(got), key=parse_cursor), "a duplicate or out of order"
    return got


async def test_events_trimmed_before_the_listener_looked_are_reported(backend_url: str) -> None:
    """Another process appends 20 events to a ``max_length=2`` channel before this one looks:
    each is delivered, or the channel is reported ``missed`` (never a quiet hole); a calm
    channel alongside is not reported."""
    listener, emitter = backend_from_url(slow_poller(backend_url)), backend_from_url(backend_url)
    sink = Collector()
    listener.set_sink(sink)
    try:
        await listener.open()
        await emitter.open()
        await listener.listen(["c", "calm"])
        ids = await emit(emitter, "c", 20, HistoryPolicy(max_length=2))
        calm = await emit(emitter, "calm", 3)
        await listener.latest_id("poke")
        got = await delivered_or_missed(sink, "c", ids[-1])
        assert await delivered_or_missed(sink, "calm", calm[-1]) == calm
    finally:
        await listener.close()
        await emitter.close()
    assert set(got) <= set(ids) and got[-2:] == ids[-2:]
    assert ("c" in sink.missed_channels) == (got != ids)
    assert "calm" not in sink.missed_channels
    if backend_url.startswith("sqlite:"):
        assert got != ids, "the scenario did not trim anything before the listener looked"


async def test_events_expired_before_the_listener_looked_are_reported(backend_url: str) -> None:
    """Events that expire (and are swept by a third process) before the listener looks leave no
    row behind at all: still delivered, or reported."""
    listener, emitter = backend_from_url(slow_poller(backend_url)), backend_from_url(backend_url)
    sweeper = backend_from_url(backend_url)
    sink = Collector()
    listener.set_sink(sink)
    try:
        await listener.open()
        await emitter.open()
        await listener.listen(["c"])
        ids = await emit(emitter, "c", 3, HistoryPolicy(expire_after=0.2))
        await asyncio.sleep(0.5)
        await sweeper.open()
        await sweeper.ping()  # a new SQLite backend sweeps expired channels right away
        await listener.latest_id("poke")
        async with asyncio.timeout(10):
            while len(sink.messages) < 3 and "c" not in sink.missed_channels:
                sink.arrived.clear()
                await sink.arrived.wait()
    finally:
        for each in (listener, emitter, sweeper):
            await each.close()
    assert [m.id for m in sink.messages] == ids or sink.missed_channels == ["c"]
    if backend_url.startswith("sqlite:"):
        assert sink.missed_channels == ["c"], "the scenario expired nothing before the look"


async def test_our_own_trimmed_appends_are_delivered_not_missed(backend: Backend) -> None:
    """Appends trimmed within their own transaction (a burst on a ``max_length=2`` channel) are
    still delivered live, and nothing is reported missed."""
    sink = Collector()
    backend.set_sink(sink)
    await backend.listen(["c"])
    policy = HistoryPolicy(max_length=2)
    appended = await asyncio.gather(
        *(backend.append("c", "t.e", json.dumps({"n": i}), policy) for i in range(30))
    )
    ids = sorted((m.id for m in appended), key=parse_cursor)
    assert [m.id for m in await sink.wait_for(30)] == ids
    assert sink.missed_channels == []


async def test_trimming_what_was_delivered_is_not_reported(backend_url: str) -> None:
    """A listener that keeps up sees trimming of events it already delivered: nothing missed."""
    listener, emitter = backend_from_url(backend_url), backend_from_url(backend_url)
    sink = Collector()
    listener.set_sink(sink)
    try:
        await listener.open()
        await emitter.open()
        await listener.listen(["c"])
        ids = []
        for _ in range(30):
            ids += await emit(emitter, "c", 1, HistoryPolicy(max_length=10))
            await asyncio.sleep(0.02)
        assert [m.id for m in await sink.wait_for(30)] == ids
    finally:
        await listener.close()
        await emitter.close()
    assert sink.missed_channels == []
