"""The subscribers of the SSE-cut scenario, and how their logs are judged.

Every subscriber writes what its application would see into a ``Log``, in order:
``("m", channel, id)`` for an event handed to the app, ``("gap", channel, cursor)`` for a native
``gap`` event, ``("replay", channel, cursor)`` when an Upstash-dialect stream restarts from an
older position than the client asked for, or says in an ``error`` event that a channel's events
were trimmed (the server's "fresh replay": what remains of the history follows).

- ``python``: stepstream's own Python client, ``subscribe_remote`` (native dialect), as is.
- ``v0`` / ``v1``: the wire behaviour of ``@upstash/realtime`` 0.3.0 (``useRealtime``) and 1.1.0
  (``RealtimeProvider``), transcribed from the packages in ``tests/browser/node_modules``: their
  query strings, how they keep ``last_ack`` per channel (0.3 from ``connected`` only while it
  has none, 1.x from every ``connected``; both from every event), their reconnect delay
  (``min(1 s * attempt, 10 s)``, attempts reset when a stream opens) and their resume after a
  ``reconnect`` event. Like the SDKs, they never drop a duplicate: what the server sends twice
  reaches the app twice.
- ``js``: ``stepstream.js`` in headless Chromium (driven from the test).
- ``native``: ``stepstream.js``'s reconnect logic transcribed (``stepstream_js``), for scenarios
  that run no browser: unlike ``subscribe_remote``, it retries a refused request (a 503 while
  storage is down) until it is stopped.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx

from stepstream.realtime.remote import subscribe_remote
from stepstream.records import parse_cursor
from tests.realtime.sse_client import Parser

Log = list[tuple[str, str, str]]
TIMEOUT = httpx.Timeout(10, read=60)


@dataclass
class Subscriber:
    name: str
    dialect: str
    channels: list[str]
    url: str
    log: Log = field(default_factory=list)
    last: dict[str, str] = field(default_factory=dict)  # channel -> last id handed to the app

    def seen(self, channel: str, event_id: str) -> None:
        self.log.append(("m", channel, event_id))
        self.last[channel] = event_id


async def python_native(sub: Subscriber) -> None:
    def gap(channel: str, cursor: str) -> None:  # the client's signal for a trimmed cursor
        sub.log.append(("gap", channel, cursor))

    async for message in subscribe_remote(sub.url, sub.channels, history=True, on_gap=gap):
        sub.seen(message.channel, message.id)


async def stepstream_js(sub: Subscriber) -> None:
    """What ``stepstream.js``'s ``subscribe({channels, history: true})`` does on the wire:
    ``channel=`` per channel and ``dialect=native``; ``history=true`` while a channel has no
    cursor, ``last_ack_<channel>`` for each that has one; a cursor per channel from every event
    (an id at or below it is dropped) and from ``connected`` when nothing was replayed
    (``0-0``); at a ``reconnect`` event it connects again at once; after any other end or
    failure, a refused request included, it retries after 0.5 s doubling up to 10 s, drawn
    between half and all of it, reset by any frame."""
    cursors: dict[str, str] = {}
    attempt = 0
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        while True:
            params = [("channel", channel) for channel in sub.channels]
            params.append(("dialect", "native"))
            if any(channel not in cursors for channel in sub.channels):
                params.append(("history", "true"))
            params += [(f"last_ack_{channel}", cursor) for channel, cursor in cursors.items()]
            again = False
            try:
                async with aclosing(_stream(client, sub.url, params)) as payloads:
                    async for payload in payloads:
                        attempt = 0
                        if "type" in payload and "event" not in payload:
                            kind, channel = payload["type"], payload.get("channel", "")
                            if kind == "connected" and channel not in cursors:
                                if payload["cursor"] == "0-0" and channel in sub.channels:
                                    cursors[channel] = payload["cursor"]
                            elif kind == "gap":
                                sub.log.append(("gap", channel, payload["cursor"]))
                            elif kind == "reconnect":
                                again = True
                                break
                            continue
                        channel, event_id = payload["channel"], payload["id"]
                        seen = cursors.get(channel)
                        if seen is not None and parse_cursor(event_id) <= parse_cursor(seen):
                            continue
                        cursors[channel] = event_id
                        sub.seen(channel, event_id)
            except httpx.HTTPError:
                pass
            if again:
                continue
            ceiling = min(10.0, 0.5 * 2**attempt)
            attempt += 1
            await asyncio.sleep(ceiling / 2 + random.random() * ceiling / 2)


async def upstash_v0(sub: Subscriber) -> None:
    """``useRealtime({channels, history: true, event: "workflow.update"})`` of 0.3.0."""
    last_ack: dict[str, str] = {}
    reconnect = False
    attempts = 0
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        while True:
            params = [("channels", channel) for channel in sub.channels]
            if reconnect:
                params.append(("reconnect", "true"))
                params += [(f"last_ack_{c}", last_ack[c]) for c in sub.channels if c in last_ack]
            else:
                params += [("history_all", "true"), ("connection_start", str(_now_ms()))]
            asked = dict(last_ack) if reconnect else {}
            try:
                async with aclosing(_stream(client, sub.url, params)) as payloads:
                    async for payload in payloads:
                        attempts = 0  # onopen
                        kind = payload.get("type")
                        if kind == "connected":
                            _note_replay(sub, asked, payload)
                            last_ack.setdefault(payload["channel"], payload["cursor"])
                        elif kind == "reconnect":
                            break
                        elif kind == "error":
                            _note_error(sub, payload)
                        elif "__stream_id" in payload:
                            channel = payload["__channel"]
                            last_ack[channel] = payload["__stream_id"]
                            sub.seen(channel, payload["__stream_id"])
                    else:
                        attempts += 1  # the stream ended without a reconnect event
            except httpx.HTTPError:
                attempts += 1
            reconnect = True
            if attempts:
                await asyncio.sleep(min(1.0 * attempts, 10.0))


async def upstash_v1(sub: Subscriber) -> None:
    """``<RealtimeProvider>`` + ``useRealtime({channels, events: ["workflow.update"]})`` of
    1.1.0: every connect sends a ``last_ack`` per channel, the millisecond of the first connect
    (or of the last ``reconnect`` event) for channels it has no id for yet."""
    last_ack: dict[str, str] = {}
    replay_since = str(_now_ms())
    attempts = 0
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        while True:
            params = [("channel", channel) for channel in sub.channels]
            asked = {c: last_ack.get(c, replay_since) for c in sub.channels}
            params += [(f"last_ack_{c}", cursor) for c, cursor in asked.items()]
            try:
                async with aclosing(_stream(client, sub.url, params)) as payloads:
                    async for payload in payloads:
                        attempts = 0
                        kind = payload.get("type")
                        if kind == "connected":
                            _note_replay(sub, asked, payload)
                            last_ack[payload["channel"]] = payload["cursor"]
                        elif kind == "reconnect":
                            replay_since = str(payload["timestamp"])
                            break
                        elif kind == "error":
                            _note_error(sub, payload)
                        elif "event" in payload and "id" in payload:
                            last_ack[payload["channel"]] = payload["id"]
                            sub.seen(payload["channel"], payload["id"])
                    else:
                        attempts += 1
            except httpx.HTTPError:
                attempts += 1
            if attempts:
                await asyncio.sleep(min(1.0 * attempts, 10.0))


def _note_replay(sub: Subscriber, asked: dict[str, str], connected: dict[str, Any]) -> None:
    """A stream that restarts before the id the client resumed from is a fresh replay: the
    server's signal (with an ``error`` event) that events after that id were trimmed."""
    channel, cursor = connected["channel"], connected["cursor"]
    if "-" in asked.get(channel, "") and cursor != asked[channel]:
        sub.log.append(("replay", channel, cursor))


def _note_error(sub: Subscriber, error: dict[str, Any]) -> None:
    """The Upstash dialects' signal for events trimmed before they were delivered live: an
    ``error`` event naming the channel in its text, then what remains of its history."""
    named = re.search(r"on channel '(.*)' were trimmed", str(error.get("error")))
    for channel in [named.group(1)] if named else sub.channels:
        sub.log.append(("replay", channel, ""))


async def _stream(
    client: httpx.AsyncClient, url: str, params: Sequence[tuple[str, str]]
) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON payloads of one SSE response (ending when the server ends it)."""
    async with client.stream("GET", url, params=list(params)) as response:
        if response.status_code != 200:
            raise httpx.HTTPStatusError(
                f"{response.status_code}", request=response.request, response=response
            )
        parser = Parser()
        async for chunk in response.aiter_raw():
            for frame in parser.feed(chunk):
                yield json.loads(frame.data)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- judging a log ----------------------------------------------------------------------------


@dataclass
class Score:
    events: int = 0  # events handed to the app
    duplicates: int = 0  # an id at or below one already handed over (for its channel)
    unsignalled: int = 0  # events missed with no gap / replay before the next one
    holes: int = 0  # runs of missed events right after a gap / replay signal ...
    signalled: int = 0  # ... and the events in them
    signals: int = 0
    unknown: int = 0  # ids that were never emitted
    behind: int = 0  # events never received by the end

    def add(self, other: Score) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def judge(log: Log, emitted: dict[str, list[str]], channels: Sequence[str]) -> Score:
    """Compare what the app saw with what was emitted, channel by channel."""
    score = Score()
    position = {c: {event_id: n for n, event_id in enumerate(emitted[c])} for c in channels}
    last = dict.fromkeys(channels, -1)
    signalled: set[str] = set()
    for kind, channel, value in log:
        if kind != "m":
            score.signals += 1
            signalled.add(channel)
            continue
        score.events += 1
        n = position[channel].get(value)
        if n is None:
            score.unknown += 1
            continue
        if n <= last[channel]:
            score.duplicates += 1
            continue
        missed = n - last[channel] - 1
        if channel in signalled:
            score.holes += missed > 0
            score.signalled += missed
        else:
            score.unsignalled += missed
        signalled.discard(channel)
        last[channel] = n
    score.behind = sum(len(emitted[c]) - 1 - last[c] for c in channels)
    return score
