"""What one SSE request asks for, read from its query string and ``Last-Event-ID``: the
dialect, the channels, where each channel starts (a cursor, a time, history options) and the
events wanted. Every mistake is a ``BadRequest`` naming it."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from stepstream.errors import BadRequest, ValidationError
from stepstream.realtime.channel import check_channel_name
from stepstream.realtime.dialects import Dialect
from stepstream.realtime.stream import Start
from stepstream.records import parse_cursor

MAX_CHANNELS = 100
LAST_ACK = "last_ack_"
_MS = re.compile(r"^\d{1,16}$")


@dataclass
class Spec:
    """What one SSE request asks for."""

    dialect: Dialect
    channels: list[str]
    starts: dict[str, Start] = field(default_factory=dict)
    events: list[str] | None = None


def parse_request(request: Request, known_events: Collection[str] = ()) -> Spec:
    """Read dialect, channels, cursors and history options from the query (and
    ``Last-Event-ID``); raise ``BadRequest`` naming the problem."""
    params = request.query_params
    dialect = _dialect(params)
    channels = _channels(dialect, params)
    acks = _cursors_from_query(params.multi_items(), channels)
    if dialect == "native":
        for channel, value in _cursors_from_last_event_id(request.headers.get("last-event-id")):
            if channel in channels:
                acks.setdefault(channel, value)
    spec = Spec(dialect, channels)
    history = _history_options(dialect, params)
    for channel in channels:
        ack = acks.get(channel)
        if ack is None:
            spec.starts[channel] = history
        elif "-" in ack:
            spec.starts[channel] = Start(after=parse_cursor(ack))
        else:
            spec.starts[channel] = Start.resume_at(int(ack))
    if dialect == "native":
        spec.events = _events(params, known_events)
    return spec


def _dialect(params: Any) -> Dialect:
    explicit = params.get("dialect")
    if explicit is not None:
        if explicit not in {"v0", "v1", "native"}:
            raise BadRequest(f"dialect={explicit!r}: use v0, v1 or native")
        if "channels" in params and "channel" in params:
            raise BadRequest("give channels with either channel= or channels=, not both")
        result: Dialect = explicit
        return result
    if "channels" in params and "channel" in params:
        raise BadRequest(
            "both channels= (the @upstash/realtime 0.3 dialect) and channel= (1.x / native) "
            "given: use one"
        )
    if "channels" in params:
        return "v0"
    if "history" in params or "events" in params:
        return "native"
    return "v1"


def _channels(dialect: Dialect, params: Any) -> list[str]:
    names = params.getlist("channels" if dialect == "v0" else "channel")
    if not names:
        names = params.getlist("channel" if dialect == "v0" else "channels") or ["default"]
    channels = list(dict.fromkeys(names))
    if len(channels) > MAX_CHANNELS:
        raise BadRequest(
            f"{len(channels)} channels requested; one connection takes at most {MAX_CHANNELS}: "
            "open several connections or group events into fewer channels"
        )
    for name in channels:
        try:
            check_channel_name(name)
        except ValidationError as exc:
            raise BadRequest(f"bad channel name: {exc}") from None
    return channels


def _events(params: Any, known_events: Collection[str]) -> list[str] | None:
    events = [e for value in params.getlist("events") for e in value.split(",") if e]
    unknown = [e for e in events if known_events and e not in known_events]
    if unknown:
        raise BadRequest(
            f"unknown event(s) in events=: {', '.join(unknown)}; known: {', '.join(known_events)}"
        )
    return events or None


def _cursors_from_query(items: list[tuple[str, str]], channels: list[str]) -> dict[str, str]:
    acks: dict[str, str] = {}
    for key, value in items:
        if not key.startswith(LAST_ACK):
            continue
        channel = key[len(LAST_ACK) :]
        if channel not in channels:
            raise BadRequest(
                f"{key} names channel {channel!r}, which this request does not subscribe"
            )
        acks[channel] = _check_ack(key, value)
    return acks


def _check_ack(name: str, value: str) -> str:
    if _MS.match(value):
        return value
    try:
        parse_cursor(value)
    except ValueError:
        raise BadRequest(
            f"{name}={value[:40]!r} is not a cursor: expected '<ms>-<seq>' (an event id) "
            "or '<ms>' (a time)"
        ) from None
    return value


def _cursors_from_last_event_id(value: str | None) -> list[tuple[str, str]]:
    if not value:
        return []
    try:
        pairs = parse_qsl(value, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise BadRequest(
            "Last-Event-ID does not parse: expected channel=cursor pairs joined by '&' as sent "
            "in this endpoint's id: lines"
        ) from None
    for _, cursor in pairs:
        try:
            parse_cursor(cursor)
        except ValueError:
            raise BadRequest(
                f"Last-Event-ID holds {cursor[:40]!r}, which is not a cursor"
            ) from None
    return pairs


def _history_options(dialect: Dialect, params: Any) -> Start:
    if dialect == "v0":
        if params.get("history_all") == "true":
            return Start(history=True)
        length = _int_param(params, "history_length", 1)
        since = _int_param(params, "history_since", 0)
        if length is not None or since is not None:
            return Start(history=True, limit=length, since_ms=since)
        start = _int_param(params, "connection_start", 0)
        return Start(since_ms=start) if start is not None else Start.live()
    if dialect == "native":
        value = params.get("history")
        if value is None or value in {"false", "0"}:
            return Start.live()
        if value == "true":
            return Start(history=True)
        limit = _int_param(params, "history", 1)
        return Start(history=True, limit=limit)
    return Start.live()


def _int_param(params: Any, name: str, minimum: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not _MS.match(value) or not minimum <= int(value) <= 10**16:
        raise BadRequest(f"{name}={value[:40]!r}: expected an integer >= {minimum}")
    return int(value)
