"""The channel tables (``rt_channels``, ``rt_events``): appending with ids, trimming and expiry,
and the lookups live delivery needs. Every function runs on the database thread, inside the
caller's transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from stepstream.clock import system_ms
from stepstream.records import CursorKey, Emit, HistoryPolicy, Message, format_cursor

Own = tuple[Message, CursorKey]
"""An event we appended, with the id that preceded it in its channel."""


class TrackingConnection(sqlite3.Connection):
    """Remembers the events appended in the current transaction (for live delivery)."""

    appended: list[Own]


def appended(conn: sqlite3.Connection) -> list[Own]:
    """The events appended since the last live poll (or since the transaction rolled back)."""
    if not hasattr(conn, "appended"):
        conn.appended = []  # type: ignore[attr-defined]
    result: list[Own] = conn.appended  # type: ignore[attr-defined]
    return result


class ChannelState:
    __slots__ = ("expired", "last", "length", "trimmed")

    def __init__(self, row: tuple[int, int, int, int, int, int | None]) -> None:
        last_ms, last_seq, trimmed_ms, trimmed_seq, length, expires_at = row
        self.last = (last_ms, last_seq)
        self.trimmed = (trimmed_ms, trimmed_seq)
        self.length = length
        self.expired = expires_at is not None and expires_at <= system_ms()
        if self.expired:
            # Everything up to the last event is gone, whether or not the sweep ran yet.
            self.trimmed = self.last
            self.length = 0


def channel_state(conn: sqlite3.Connection, channel: str) -> ChannelState | None:
    row = conn.execute(
        "SELECT last_ms, last_seq, trimmed_ms, trimmed_seq, length, expires_at "
        "FROM rt_channels WHERE name = ?",
        (channel,),
    ).fetchone()
    return None if row is None else ChannelState(row)


def expire(conn: sqlite3.Connection, channel: str) -> None:
    conn.execute("DELETE FROM rt_events WHERE channel = ?", (channel,))
    conn.execute(
        "UPDATE rt_channels SET trimmed_ms = last_ms, trimmed_seq = last_seq, length = 0, "
        "expires_at = NULL WHERE name = ?",
        (channel,),
    )


def append_many(
    conn: sqlite3.Connection,
    channel: str,
    events: list[tuple[str, str]],
    policy: HistoryPolicy,
) -> list[Message]:
    """Append ``(event, raw)`` pairs to one channel: ids, trimming and expiry, one channel-row
    read and write however many events."""
    now = system_ms()
    state = channel_state(conn, channel)
    if state is not None and state.expired:
        expire(conn, channel)
    key = (now - 1, 0) if state is None else state.last
    length = 0 if state is None else state.length
    prev = (0, 0) if state is None else state.last
    messages = []
    rows = []
    own = appended(conn)  # delivered live after commit, even if trimmed below
    for event, raw in events:
        key = (now, 0) if now > key[0] else (key[0], key[1] + 1)
        rows.append((channel, key[0], key[1], event, raw))
        message = Message(format_cursor(key), channel, event, raw, key)
        messages.append(message)
        own.append((message, prev))
        prev = key
    conn.executemany(
        "INSERT INTO rt_events (channel, ms, seq, event, data) VALUES (?, ?, ?, ?, ?)", rows
    )
    length += len(events)
    expires_at = None if policy.expire_after is None else now + int(policy.expire_after * 1000)
    trimmed: CursorKey | None = None
    if policy.max_length is not None and length > policy.max_length:
        excess = length - policy.max_length
        old = conn.execute(
            "SELECT pos, ms, seq FROM rt_events WHERE channel = ? ORDER BY ms, seq LIMIT ?",
            (channel, excess),
        ).fetchall()
        conn.execute("DELETE FROM rt_events WHERE channel = ? AND pos <= ?", (channel, old[-1][0]))
        trimmed = (old[-1][1], old[-1][2])
        length = policy.max_length
    conn.execute(
        "INSERT INTO rt_channels (name, last_ms, last_seq, length, expires_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET last_ms = excluded.last_ms, "
        "last_seq = excluded.last_seq, length = excluded.length, "
        "expires_at = excluded.expires_at",
        (channel, key[0], key[1], length, expires_at),
    )
    if trimmed is not None:
        conn.execute(
            "UPDATE rt_channels SET trimmed_ms = ?, trimmed_seq = ? WHERE name = ?",
            (trimmed[0], trimmed[1], channel),
        )
    return messages


def append_emits(conn: sqlite3.Connection, emits: Iterable[Emit], policy: HistoryPolicy) -> None:
    """The events reporting a run's change, appended in its transaction (grouped by channel)."""
    by_channel: dict[str, list[tuple[str, str]]] = {}
    for emit in emits:
        by_channel.setdefault(emit.channel, []).append((emit.event, emit.raw))
    for channel, events in by_channel.items():
        append_many(conn, channel, events, policy)


def top_position(conn: sqlite3.Connection) -> int:
    """The last position ever handed out (AUTOINCREMENT never reuses one)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'rt_events'").fetchone()
    return 0 if row is None else int(row[0])


def _in_chunks(conn: sqlite3.Connection, sql: str, names: list[str]) -> list[tuple[str, int, int]]:
    rows: list[tuple[str, int, int]] = []
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows.extend(conn.execute(sql.format(marks), chunk).fetchall())
    return rows


def last_ids(conn: sqlite3.Connection, names: list[str]) -> list[tuple[str, CursorKey]]:
    sql = "SELECT name, last_ms, last_seq FROM rt_channels WHERE name IN ({})"
    return [(name, (ms, seq)) for name, ms, seq in _in_chunks(conn, sql, names)]


def trimmed_marks(conn: sqlite3.Connection, names: list[str]) -> list[tuple[str, CursorKey]]:
    """Each channel's newest removed id, whether trimmed or expired (``expire`` sets it too)."""
    sql = "SELECT name, trimmed_ms, trimmed_seq FROM rt_channels WHERE name IN ({})"
    return [(name, (ms, seq)) for name, ms, seq in _in_chunks(conn, sql, names)]
