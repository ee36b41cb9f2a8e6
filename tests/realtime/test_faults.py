"""Realtime under faults, on every backend: events trimmed before another process delivered
them, a silently dead Redis pub/sub connection, stalled consumers, huge histories, and a
reconnect storm of thousands of subscriptions. Each test states the promise it checks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from stepstream import CursorUnavailable, HistoryPolicy, Message, Realtime
from stepstream.realtime.hub import Feed
from stepstream.realtime.sse import RECONNECT_JITTER, reconnect_after
from stepstream.realtime.stream import Connected, Gap, Item, Start, Stream
from stepstream.records import parse_cursor
from tests.realtime.tcp_proxy import Proxy

pytestmark = pytest.mark.anyio

SCHEMA = {"load": {"n": int}}


def slow_poller(url: str) -> str:
    """The store URL for a process that looks for other processes' commits only every 5 s
    (SQLite polls; Redis pushes and takes the URL unchanged). ``poke`` makes it look now."""
    return f"{url}?poll_interval=5" if url.startswith("sqlite:") else url


async def poke(realtime: Realtime) -> None:
    await realtime.channel("poke").history()  # any job makes the SQLite thread poll after it


async def emit(realtime: Realtime, channel: str, numbers: range) -> list[str]:
    return [await realtime.channel(channel).emit("load.n", n) for n in numbers]


async def collect(stream: Stream, until: Callable[[list[Item]], bool]) -> list[Item]:
    items: list[Item] = []
    async with asyncio.timeout(15):
        while not until(items):
            items.extend(await stream.next())
    return items


def ids_of(items: list[Item]) -> list[str]:
    return [item.id for item in items if isinstance(item, Message)]


def has(event_id: str) -> Callable[[list[Item]], bool]:
    return lambda items: event_id in ids_of(items)


# -- issue 8.6: no silent loss when another process trims before we look ----------------------


async def test_events_trimmed_before_another_process_saw_them_are_a_gap(
    backend_url: str,
) -> None:
    """The subscriber's process looks late; meanwhile another process appends 12 events to a
    ``max_length=2`` channel. The subscriber gets every event, or a ``Gap`` before the events
    that follow the hole — never a quiet hole."""
    reader = Realtime(schema=SCHEMA, backend=slow_poller(backend_url))
    writer = Realtime(schema=SCHEMA, backend=backend_url, history=HistoryPolicy(max_length=2))
    try:
        stream = await reader.stream({"c": Start()}, on_gap="report")
        await stream.start()
        ids = await emit(writer, "c", range(12))
        await poke(reader)
        items = await collect(stream, has(ids[-1]))
        stream.close()
    finally:
        await reader.aclose()
        await writer.aclose()
    got = ids_of(items)
    assert got == sorted(set(got), key=parse_cursor), "a duplicate or out of order"
    assert got[-2:] == ids[-2:]
    if got != ids:
        assert isinstance(items[0], Gap), items[:3]
        assert items[0].channel == "c"
        assert got == ids[-2:], "after the gap comes what remains, nothing else"
    if backend_url.startswith("sqlite:"):
        assert got != ids, "the scenario did not trim anything before the reader looked"


async def test_a_live_gap_raises_for_python_subscribers(backend_url: str) -> None:
    """``channel.subscribe()`` (no gap events in Python) raises ``CursorUnavailable`` rather
    than skip what was trimmed; on Redis, where pub/sub carries every event, nothing is lost."""
    reader = Realtime(schema=SCHEMA, backend=slow_poller(backend_url))
    plain = Realtime(schema=SCHEMA, backend=backend_url)
    writer = Realtime(schema=SCHEMA, backend=backend_url, history=HistoryPolicy(max_length=2))
    subscription = reader.channel("c").subscribe()
    try:
        # Live only: emit a marker until one arrives, so the subscription is surely live.
        pending = asyncio.ensure_future(anext(subscription))
        async with asyncio.timeout(15):
            while not pending.done():
                await plain.channel("c").emit("load.n", -1)
                await poke(reader)
                await asyncio.wait({pending}, timeout=0.1)
        assert pending.result().data == -1
        ids = await emit(writer, "c", range(12))
        await poke(reader)
        got = []
        async with asyncio.timeout(15):
            if backend_url.startswith("sqlite:"):
                with pytest.raises(CursorUnavailable):
                    while True:
                        assert (await anext(subscription)).data == -1
            while len(got) < 12 and not backend_url.startswith("sqlite:"):
                message = await anext(subscription)
                if message.data != -1:
                    got.append(message.id)
        assert got == ([] if backend_url.startswith("sqlite:") else ids)
    finally:
        await subscription.aclose()
        for realtime in (reader, plain, writer):
            await realtime.aclose()


# -- issue 8.13a: a silently dead Redis pub/sub connection ---------------------------------------


@pytest.mark.timeout(60)
async def test_a_silently_dead_pubsub_connection_is_noticed(redis_server: str) -> None:
    """The pub/sub connection goes half-open (nothing forwarded, nothing closed). The stream
    notices within the health-check bound, catches up from storage, and goes on live: every
    event once, in order."""
    port = urlsplit(redis_server).port
    assert port is not None
    proxy = Proxy(port)
    via = await proxy.start()
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    interval = 0.3
    reader = Realtime(
        schema=SCHEMA,
        backend=f"redis://127.0.0.1:{via}/0?prefix={prefix}&live_check_interval={interval}",
    )
    writer = Realtime(schema=SCHEMA, backend=f"{redis_server}?prefix={prefix}")
    try:
        stream = await reader.stream({"c": Start()})
        await stream.start()
        first = await emit(writer, "c", range(1))
        assert ids_of(await collect(stream, has(first[0]))) == first
        assert proxy.freeze_subscribers() == 1
        ids = await emit(writer, "c", range(1, 6))
        began = time.monotonic()
        items = await collect(stream, has(ids[-1]))
        print(f"dead pub/sub connection noticed and caught up in {time.monotonic() - began:.2f}s")
        assert ids_of(items) == ids
        later = await emit(writer, "c", range(6, 8))
        assert ids_of(await collect(stream, has(later[-1]))) == later
        stream.close()
    finally:
        await reader.aclose()
        await writer.aclose()
        await proxy.close()


async def test_a_failed_subscribe_leaves_no_unretrieved_future(redis_server: str) -> None:
    """A subscribe that fails (Redis going away) raises BackendUnavailable to its caller and
    leaves nothing for the event loop to complain about ("exception was never retrieved")."""
    import gc

    import redis.exceptions

    from stepstream import BackendUnavailable
    from stepstream.backends.redis import RedisBackend

    complaints: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: complaints.append(context["message"]))
    backend = RedisBackend.from_url(f"{redis_server}?prefix=test-{uuid.uuid4().hex[:12]}:")
    await backend.open()
    try:
        pubsub = backend._live_client.pubsub()  # type: ignore[union-attr]

        async def refuse(*keys: str) -> None:
            raise redis.exceptions.ConnectionError("Connection closed by server.")

        pubsub.subscribe = refuse
        backend._pubsub = pubsub
        with pytest.raises(BackendUnavailable):
            await backend.listen(["a", "b"])
        gc.collect()
        await asyncio.sleep(0)
        assert complaints == []
    finally:
        loop.set_exception_handler(None)
        await backend.close()


# -- issue 8.13b: what a stalled consumer may hold ---------------------------------------------


def test_a_feed_holds_a_bounded_number_of_bytes() -> None:
    feed = Feed(["c"], limit=10_000, max_bytes=10_000)
    for n in range(1_000):
        feed.push(Message(f"1-{n}", "c", "load.n", "9" * 100))
    assert feed.overflow
    assert feed.size <= 10_000 and sum(len(m.raw) for m in feed.queue) == feed.size
    assert len(feed.queue) <= 100


async def test_a_consumer_past_its_byte_bound_catches_up_from_storage(
    make_realtime: Callable[..., Realtime],
) -> None:
    realtime = make_realtime(schema={"load": {"text": str}})
    hub = await realtime.hub()
    stream = Stream(hub, realtime.backend, {"c": Start()}, queue_bytes=2_000)
    await stream.start()
    ids = [await realtime.channel("c").emit("load.text", "x" * 200) for _ in range(50)]
    assert stream.feed.size <= 2_000
    items = await collect(stream, has(ids[-1]))
    stream.close()
    assert ids_of(items) == ids


# -- issue 8.13c: history is read in pages ------------------------------------------------------


class CountingReads:
    """Wraps a backend's ``read`` to record how many events each call returned."""

    def __init__(self, realtime: Realtime) -> None:
        self.sizes: list[int] = []
        backend = realtime.backend
        original = backend.read

        async def read(channel: str, **kwargs: object) -> list[Message]:
            result = await original(channel, **kwargs)  # type: ignore[arg-type]
            self.sizes.append(len(result))
            return result

        backend.read = read  # type: ignore[method-assign]


async def test_a_long_replay_is_paged_in_order_into_live(
    make_realtime: Callable[..., Realtime],
) -> None:
    """100 stored events replayed 7 at a time while 20 more arrive live: every event once, in
    order, across every page boundary and the handover to live."""
    realtime = make_realtime(schema=SCHEMA)
    ids = await emit(realtime, "c", range(100))
    reads = CountingReads(realtime)
    stream = Stream(await realtime.hub(), realtime.backend, {"c": Start(history=True)}, page=7)
    items = await stream.start()
    assert items[0] == Connected("c", "0-0")
    live: list[str] = []
    async with asyncio.timeout(15):
        while len(ids_of(items)) < 120:
            if len(live) < 20:
                live += await emit(realtime, "c", range(100 + len(live), 101 + len(live)))
            items += await stream.next()
    stream.close()
    assert ids_of(items) == ids + live
    assert max(reads.sizes) <= 7
    assert len(reads.sizes) >= 100 // 7


async def test_latest_n_and_resume_are_paged(make_realtime: Callable[..., Realtime]) -> None:
    realtime = make_realtime(schema=SCHEMA)
    ids = await emit(realtime, "c", range(60))
    reads = CountingReads(realtime)
    hub = await realtime.hub()
    cases = {
        "latest 30": (Start(history=True, limit=30), ids[-30:]),
        "after a cursor": (Start(after=parse_cursor(ids[9])), ids[10:]),
        "latest 5": (Start(history=True, limit=5), ids[-5:]),
    }
    for name, (start, expected) in cases.items():
        stream = Stream(hub, realtime.backend, {"c": start}, page=7)
        items = await stream.start()
        async with asyncio.timeout(10):
            while len(ids_of(items)) < len(expected):
                items += await stream.next()
        stream.close()
        assert ids_of(items) == expected, name
        assert isinstance(items[0], Connected), name
    assert max(reads.sizes) <= 7


@pytest.mark.parametrize("on_gap", ["report", "raise"])
async def test_history_trimmed_between_pages_is_a_gap(
    make_realtime: Callable[..., Realtime], on_gap: str
) -> None:
    realtime = make_realtime(schema=SCHEMA, history=HistoryPolicy(max_length=50))
    await emit(realtime, "c", range(50))
    stream = Stream(
        await realtime.hub(),
        realtime.backend,
        {"c": Start(history=True)},
        page=7,
        on_gap=on_gap,  # type: ignore[arg-type]
    )
    first = await stream.start()
    sent = ids_of(first)
    assert len(sent) == 7
    newer = await emit(realtime, "c", range(50, 110))  # trims everything not yet replayed
    if on_gap == "raise":
        with pytest.raises(CursorUnavailable):
            await stream.next()
        stream.close()
        return
    items = await collect(stream, has(newer[-1]))
    stream.close()
    assert items[0] == Gap("c", sent[-1])
    assert ids_of(items) == newer[10:]


# -- issue 8.13d: reconnects spread out ---------------------------------------------------------


@pytest.mark.parametrize("max_duration", [300.0, 60.0, 3.3])
def test_reconnect_deadlines_are_jittered_within_bounds(max_duration: float) -> None:
    deadlines = [reconnect_after(max_duration) for _ in range(2_000)]
    low = max(max_duration * (1 - RECONNECT_JITTER) - 2, 1)
    high = max(max_duration - 2, 1)
    assert all(low <= d <= high for d in deadlines)
    spread = max(deadlines) - min(deadlines)
    if high > 1:
        assert spread > 0.8 * (high - low), "clients that connected together reconnect apart"


# -- issue 8.13e: a reconnect storm of subscriptions -------------------------------------------


async def subscribe_many(realtime: Realtime, count: int) -> list[Stream]:
    hub = await realtime.hub()
    streams = [Stream(hub, realtime.backend, {f"storm-{n}": Start()}) for n in range(count)]
    await asyncio.gather(*(stream.start() for stream in streams))
    return streams


async def assert_each_gets_its_event(streams: list[Stream], writer: Realtime) -> None:
    names = [stream.feed.channels[0] for stream in streams]
    ids = await asyncio.gather(*(writer.channel(name).emit("load.n", 1) for name in names))
    async with asyncio.timeout(30):
        for stream, event_id in zip(streams, ids, strict=True):
            assert ids_of(await collect(stream, has(event_id))) == [event_id]
    for stream in streams:
        stream.close()


async def test_a_channel_whose_subscribers_were_lost_while_it_registered_is_not_left_watched(
    make_realtime: Callable[..., Realtime],
) -> None:
    """The backend's connection drops while a channel registers and comes back: the hub tells
    its subscribers they were lost, and the registration then succeeds on the new connection.
    A subscriber that does not come back must not leave the channel watched for nobody (on
    PostgreSQL every later append to it would NOTIFY, and its watch be renewed, for ever)."""
    realtime = make_realtime()
    hub = await realtime.hub()
    backend = realtime.backend
    listen, unlisten = backend.listen, backend.unlisten
    orphan_unlistened = asyncio.Event()

    async def losing(channels: list[str]) -> None:
        await listen(channels)
        hub.lost("the test: the connection dropped while the channel registered")

    async def recording(channels: list[str]) -> None:
        if "orphan" in channels:
            orphan_unlistened.set()
        await unlisten(channels)

    backend.listen = losing  # type: ignore[method-assign, assignment]
    backend.unlisten = recording  # type: ignore[method-assign, assignment]
    feed = Feed(["orphan"])
    await hub.attach(feed)
    assert feed.lost
    async with asyncio.timeout(5):
        await orphan_unlistened.wait()


@pytest.mark.timeout(120)
async def test_a_burst_of_subscriptions_is_one_listen_per_batch(
    make_realtime: Callable[..., Realtime],
) -> None:
    """2,000 subscriptions on distinct channels at once: a handful of backend ``listen`` calls
    (not one each), and every subscriber gets every event."""
    reader, writer = make_realtime(schema=SCHEMA), make_realtime(schema=SCHEMA)
    await reader.open()
    backend = reader.backend
    calls: list[int] = []
    listen = backend.listen

    async def counting(channels: list[str]) -> None:
        calls.append(len(channels))
        await listen(channels)

    backend.listen = counting  # type: ignore[method-assign, assignment]
    streams = await subscribe_many(reader, 2_000)
    assert sum(calls) == 2_000
    assert len(calls) <= 20, f"{len(calls)} listen calls for one burst"
    await assert_each_gets_its_event(streams, writer)


@pytest.mark.timeout(120)
async def test_a_burst_of_subscriptions_over_a_slow_link(redis_server: str) -> None:
    """With 10 ms of round trip to Redis, 2,000 subscriptions one round trip each would pass
    the 15 s subscribe timeout; batched, they take a few round trips."""
    port = urlsplit(redis_server).port
    assert port is not None
    proxy = Proxy(port, delay=0.005)
    via = await proxy.start()
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    reader = Realtime(schema=SCHEMA, backend=f"redis://127.0.0.1:{via}/0?prefix={prefix}")
    writer = Realtime(schema=SCHEMA, backend=f"{redis_server}?prefix={prefix}")
    try:
        streams = await subscribe_many(reader, 2_000)
        await assert_each_gets_its_event(streams, writer)
    finally:
        await reader.aclose()
        await writer.aclose()
        await proxy.close()


async def test_backend_errors_never_show_the_redis_password() -> None:
    """Backend errors reach logs and 503 bodies: the URL in them has no password."""
    from stepstream import BackendUnavailable
    from stepstream.backends.redis import RedisBackend
    from tests.conftest import free_port

    backend = RedisBackend.from_url(f"redis://app:s3cret-pw@127.0.0.1:{free_port()}/0")
    with pytest.raises(BackendUnavailable) as caught:
        await backend.open()
    assert "s3cret-pw" not in str(caught.value)
    assert "***@127.0.0.1" in str(caught.value)
