"""The promise: a subscriber dropped and resumed at random moments, while several emitters run,
receives exactly the stored sequence — no gap, no duplicate — on every backend."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from stepstream import Realtime

pytestmark = pytest.mark.anyio

SCHEMA = {"load": {"n": int}}
EMITTERS = 5
PER_EMITTER = 1_000  # 5,000 events in all


async def run_emitter(realtime: Realtime, seed: int) -> None:
    rng = random.Random(seed)
    channel = realtime.channel("busy")
    for i in range(PER_EMITTER):
        await channel.emit("load.n", seed * PER_EMITTER + i)
        if rng.random() < 0.05:
            await asyncio.sleep(rng.random() / 500)


async def resuming_subscriber(realtime: Realtime, total: int, seed: int) -> tuple[list[str], int]:
    """Consume ``total`` events, dropping the subscription after a random number of events
    (and sometimes sleeping while disconnected), resuming each time after the last id seen."""
    rng = random.Random(seed)
    received: list[str] = []
    sessions = 0
    channel = realtime.channel("busy")
    while len(received) < total:
        sessions += 1
        after = received[-1] if received else None
        subscription = channel.subscribe(after=after) if after else channel.subscribe(history=True)
        budget = rng.randint(1, 400)
        async for message in subscription:
            received.append(message.id)
            budget -= 1
            if budget == 0 or len(received) == total:
                break
        await subscription.aclose()
        if rng.random() < 0.3:
            await asyncio.sleep(rng.random() / 100)
    return received, sessions


@pytest.mark.parametrize(
    "emitters_elsewhere", [False, True], ids=["same-realtime", "other-realtime"]
)
@pytest.mark.timeout(240)
async def test_no_gap_no_duplicate_across_random_resumes(
    make_realtime: Callable[..., Realtime], emitters_elsewhere: bool
) -> None:
    reader = make_realtime(schema=SCHEMA)
    writer = make_realtime(schema=SCHEMA) if emitters_elsewhere else reader
    total = EMITTERS * PER_EMITTER
    consumer = asyncio.create_task(resuming_subscriber(reader, total, seed=7))
    await asyncio.gather(*(run_emitter(writer, seed) for seed in range(EMITTERS)))
    async with asyncio.timeout(120):
        received, sessions = await consumer
    stored = [m.id for m in await writer.channel("busy").history(limit=None)]
    assert len(stored) == total
    assert len(set(received)) == len(received), "a duplicate was delivered"
    assert received == stored, "the received sequence differs from the stored one"
    assert sessions > 10  # the subscriber really was dropped and resumed many times
