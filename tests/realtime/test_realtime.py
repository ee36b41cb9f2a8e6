"""``Realtime``: schema validation, history, subscribe, trimming — on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from stepstream import CursorUnavailable, HistoryPolicy, Message, Realtime, ValidationError
from stepstream.backends.memory import MemoryBackend
from stepstream.realtime.stream import Start

pytestmark = pytest.mark.anyio


class Note(BaseModel):
    text: str
    priority: int = 0


class Point(BaseModel):
    kind: Literal["point"]
    x: int
    y: int


class Line(BaseModel):
    kind: Literal["line"]
    points: list[Point]


SCHEMA = {
    "chat": {"note": Note, "count": int},
    "shape": Annotated[Point | Line, Field(discriminator="kind")],
}


async def test_emit_returns_the_stored_id(make_realtime: Callable[..., Realtime]) -> None:
    realtime = make_realtime(schema=SCHEMA)
    channel = realtime.channel("room")
    ids = [await channel.emit("chat.note", {"text": f"hi {i}"}) for i in range(3)]
    history = await channel.history()
    assert [m.id for m in history] == ids
    assert [m.data for m in history] == [{"text": f"hi {i}", "priority": 0} for i in range(3)]
    assert all(m.event == "chat.note" and m.channel == "room" for m in history)


async def test_unknown_event_is_refused_and_nothing_stored(
    make_realtime: Callable[..., Realtime],
) -> None:
    realtime = make_realtime(schema=SCHEMA)
    with pytest.raises(ValidationError, match=r"unknown event 'chat\.nope'.*chat\.note"):
        await realtime.channel("room").emit("chat.nope", {"text": "x"})
    assert await realtime.channel("room").history() == []


async def test_wrong_field_names_its_path_and_nothing_stored(
    make_realtime: Callable[..., Realtime],
) -> None:
    realtime = make_realtime(schema=SCHEMA)
    channel = realtime.channel("room")
    with pytest.raises(ValidationError) as info:
        await channel.emit("chat.note", {"text": 5, "priority": "high"})
    locs = {e.loc for e in info.value.errors}
    assert locs == {"text", "priority"}
    assert "priority" in str(info.value)
    with pytest.raises(ValidationError) as nested:
        await channel.emit("shape", {"kind": "line", "points": [{"kind": "point", "x": 1}]})
    assert [e.loc for e in nested.value.errors] == ["line.points.0.y"]
    with pytest.raises(ValidationError, match="Field required"):
        await channel.emit("chat.note", {})
    assert await channel.history() == []


async def test_scalar_and_union_leaves(make_realtime: Callable[..., Realtime]) -> None:
    realtime = make_realtime(schema=SCHEMA)
    channel = realtime.channel("room")
    await channel.emit("chat.count", 3)
    await channel.emit("shape", {"kind": "point", "x": 1, "y": 2})
    with pytest.raises(ValidationError):
        await channel.emit("chat.count", "three")
    assert [m.data for m in await channel.history()] == [3, {"kind": "point", "x": 1, "y": 2}]


async def test_history_limit_returns_the_latest(make_realtime: Callable[..., Realtime]) -> None:
    realtime = make_realtime(schema=SCHEMA)
    channel = realtime.channel("room")
    for i in range(120):
        await channel.emit("chat.count", i)
    assert [m.data for m in await channel.history()] == list(range(20, 120))  # default 100
    assert [m.data for m in await channel.history(limit=5)] == [115, 116, 117, 118, 119]
    assert len(await channel.history(limit=None)) == 120
    with pytest.raises(ValidationError):
        await channel.history(limit=0)


async def test_history_after_a_trimmed_cursor(make_realtime: Callable[..., Realtime]) -> None:
    realtime = make_realtime(schema=SCHEMA, history=HistoryPolicy(max_length=3))
    channel = realtime.channel("room")
    ids = [await channel.emit("chat.count", i) for i in range(6)]
    assert [m.data for m in await channel.history()] == [3, 4, 5]
    with pytest.raises(CursorUnavailable):
        await channel.history(after=ids[0])
    assert [m.data for m in await channel.history(after=ids[3])] == [4, 5]
    with pytest.raises(ValidationError, match="not a cursor"):
        await channel.history(after="yesterday")


async def test_the_default_channel(make_realtime: Callable[..., Realtime]) -> None:
    realtime = make_realtime(schema=SCHEMA)
    await realtime.emit("chat.count", 1)
    assert [m.channel for m in await realtime.history()] == ["default"]


@pytest.mark.parametrize("name", ["", "x" * 201, "bad\nname"])
def test_bad_channel_names(name: str) -> None:
    with pytest.raises(ValidationError):
        Realtime(schema=SCHEMA, backend="sqlite:///unused.db").channel(name)


async def take(iterator: object, count: int) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(10):
        async for message in iterator:  # type: ignore[attr-defined]
            got.append(message)
            if len(got) == count:
                break
    await iterator.aclose()  # type: ignore[attr-defined]
    return got


async def test_subscribe_history_then_live(make_realtime: Callable[..., Realtime]) -> None:
    realtime = make_realtime(schema=SCHEMA)
    channel = realtime.channel("room")
    for i in range(3):
        await channel.emit("chat.count", i)
    subscription = channel.subscribe(history=True)
    first = await anext(subscription)  # attached and replaying before more arrive
    for i in range(3, 6):
        await channel.emit("chat.count", i)
    rest = await take(subscription, 5)
    assert [m.data for m in [first, *rest]] == list(range(6))


async def test_subscribe_without_history_is_live_only(
    make_realtime: Callable[..., Realtime],
) -> None:
    realtime = make_realtime(schema=SCHEMA)
    channel = realtime.channel("room")
    await channel.emit("chat.count", 0)
    subscription = channel.subscribe()
    pending = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0.2)  # let it attach; nothing old may arrive meanwhile
    assert not pending.done()
    await channel.emit("chat.count", 1)
    async with asyncio.timeout(10):
        assert (await pending).data == 1
    await subscription.aclose()


async def test_subscribe_latest_n_and_event_filter(make_realtime: Callable[..., Realtime]) -> None:
    realtime = make_realtime(schema=SCHEMA)
    channel = realtime.channel("room")
    for i in range(5):
        await channel.emit("chat.count", i)
        await channel.emit("chat.note", {"text": str(i)})
    got = await take(channel.subscribe(history=4, events=["chat.count"]), 2)
    assert [m.data for m in got] == [3, 4]


async def test_subscribe_after_resumes_strictly_after(
    make_realtime: Callable[..., Realtime],
) -> None:
    realtime = make_realtime(schema=SCHEMA)
    channel = realtime.channel("room")
    ids = [await channel.emit("chat.count", i) for i in range(5)]
    got = await take(channel.subscribe(after=ids[1]), 3)
    assert [m.id for m in got] == ids[2:]


async def test_subscribe_after_a_trimmed_cursor_raises(
    make_realtime: Callable[..., Realtime],
) -> None:
    realtime = make_realtime(schema=SCHEMA, history=HistoryPolicy(max_length=2))
    channel = realtime.channel("room")
    ids = [await channel.emit("chat.count", i) for i in range(5)]
    with pytest.raises(CursorUnavailable):
        await anext(channel.subscribe(after=ids[0]))


async def test_subscriber_sees_events_from_another_realtime(
    make_realtime: Callable[..., Realtime],
) -> None:
    reader, writer = make_realtime(schema=SCHEMA), make_realtime(schema=SCHEMA)
    subscription = reader.channel("room").subscribe(history=True)
    await writer.channel("room").emit("chat.count", 0)
    first = await anext(subscription)
    for i in range(1, 10):
        await writer.channel("room").emit("chat.count", i)
    rest = await take(subscription, 9)
    assert [m.data for m in [first, *rest]] == list(range(10))


async def test_slow_consumer_catches_up_from_storage(
    make_realtime: Callable[..., Realtime],
) -> None:
    realtime = make_realtime(schema=SCHEMA)
    channel = realtime.channel("room")
    stream = await realtime.stream({"room": Start()})
    stream.feed.limit = 10  # overflow quickly
    await stream.start()
    for i in range(50):
        await channel.emit("chat.count", i)
    got: list[int] = []
    async with asyncio.timeout(10):
        while len(got) < 50:
            got.extend(m.data for m in await stream.next() if isinstance(m, Message))
    stream.close()
    assert got == list(range(50))


class StoredRightAfterTheReplay(MemoryBackend):
    """Stores an event in the instant between a subscriber's replay read and what it reads next,
    as another process's commit can on any networked store."""

    def __init__(self) -> None:
        super().__init__()
        self.sneaked: Message | None = None

    async def read(self, channel: str, **kwargs: Any) -> list[Message]:
        found = await super().read(channel, **kwargs)
        if self.sneaked is None:
            self.sneaked = await self.append(channel, "t.e", "1", HistoryPolicy())
        return found


@pytest.mark.parametrize(
    "start",
    [
        {"history": True},
        {"history": 5},
        {"after": "1-0"},
    ],
    ids=["all", "latest-5", "after"],
)
async def test_an_event_stored_between_the_replay_and_the_cursor_is_delivered(
    start: dict[str, Any],
) -> None:
    backend = StoredRightAfterTheReplay()
    realtime = Realtime(backend=backend)
    try:
        subscription = realtime.channel("race").subscribe(**start)
        first = await asyncio.wait_for(anext(subscription), 5)
        assert first == backend.sneaked
        await subscription.aclose()
    finally:
        await realtime.aclose()
