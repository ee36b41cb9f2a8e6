"""Live delivery across processes, on the database thread.

After every commit, and every ``poll_interval`` seconds while something listens, the thread
checks ``PRAGMA data_version`` (which changes when another connection commits) and hands rows
past its cursor to the sink. Rows are numbered by an ``AUTOINCREMENT`` position assigned under
SQLite's write lock, so "every row after position P" is exactly "every event committed after we
read P" — except rows another process trimmed (``max_length``) or expired before this one
looked: see ``LiveFeed._missed`` for how those are reported instead of silently skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from stepstream.backends.sqlite.channels import Own, appended, expire, top_position, trimmed_marks
from stepstream.clock import system_ms
from stepstream.records import CursorKey, Message

SWEEP_INTERVAL = 30.0
# How often, at most, every watched channel is checked for events removed before this process
# saw them, when a removal could not be pinned on a channel (see ``_missed``).
AUDIT_INTERVAL = 1.0


class LiveFeed:
    """What the database thread watches for, and how far it has delivered. Owned by that thread:
    only jobs running on it read or change these fields."""

    def __init__(self) -> None:
        # Watched channel -> the newest id delivered live (or existing when listening began).
        self.marks: dict[str, CursorKey] = {}
        self.wake_callbacks: list[Callable[[], None]] = []
        # The last rt_events position looked at; None while nothing is watched.
        self.cursor: int | None = None
        self.audit_owed = False
        self._next_audit = 0.0
        self._data_version = -1
        self._next_sweep = 0.0

    @property
    def polling(self) -> bool:
        """Whether anything (a channel, a worker's wakeups) needs other processes' commits."""
        return bool(self.marks or self.wake_callbacks)

    def poll(
        self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, *, force: bool
    ) -> tuple[list[Message], list[str]]:
        """Live events committed since the last look (ours and other processes'), and the
        watched channels that lost events to trimming before we could see them."""
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        foreign = version != self._data_version
        if not (force or foreign or self.audit_owed):
            return [], []
        if foreign and self.wake_callbacks:
            # Another process committed: maybe a run became due. Claiming is cheap; let the
            # workers look now instead of at their next poll.
            for callback in self.wake_callbacks:
                loop.call_soon_threadsafe(callback)
        self._data_version = version
        own_list = appended(conn)
        own = own_list[:]
        own_list.clear()
        if self.cursor is None:
            return [], []
        select = (
            "SELECT pos, channel, ms, seq, event, data FROM rt_events WHERE pos > ? ORDER BY pos"
        )
        if not foreign and not self.audit_owed:
            # Only our own commits since the last look: nothing was removed unseen.
            rows = conn.execute(select, (self.cursor,)).fetchall()
            if rows:
                self.cursor = rows[-1][0]
            return self._live(rows, own), []
        conn.execute("BEGIN")  # rows, positions and watermarks from one snapshot
        try:
            rows = conn.execute(select, (self.cursor,)).fetchall()
            top = top_position(conn)
            missed = self._missed(conn, rows, own, top)
        finally:
            conn.execute("COMMIT")
        self.cursor = max(self.cursor, top)
        return self._live(rows, own), missed

    def _live(self, rows: list[Any], own: list[Own]) -> list[Message]:
        marks = self.marks
        live = []
        for _, channel, ms, seq, event, data in rows:
            if channel in marks:
                key = (ms, seq)
                live.append(Message(f"{ms}-{seq}", channel, event, data, key))
                if key > marks[channel]:
                    marks[channel] = key
        if own:
            # Our own appends that max_length trimmed within the same transaction never show up
            # in the table, but were emitted all the same: deliver them too, in id order.
            seen = {(m.channel, m.key) for m in live}
            extra = [m for m, _ in own if m.channel in marks and (m.channel, m.key) not in seen]
            if extra:
                for m in extra:
                    if m.key > marks[m.channel]:
                        marks[m.channel] = m.key
                live.extend(extra)
                live.sort(key=lambda m: m.key)
        return live

    def _missed(
        self, conn: sqlite3.Connection, rows: list[Any], own: list[Own], top: int
    ) -> list[str]:
        """Watched channels that lost events before this process saw them.

        Another process may append to a channel and trim (``max_length``) or expire those very
        events before our next poll: their rows are gone, so "rows after our cursor" skips them
        without a trace. Positions are never reused, so such a removal leaves a *hole*: fewer
        rows after the cursor than positions handed out (``top - cursor``), beyond our own
        appends that we trimmed ourselves (we deliver those from memory). Only then is anything
        checked: for each watched channel touched here, its ``trimmed`` watermark is compared
        with what we delivered — the mark, extended through our own appends that directly
        follow it. A watermark past that means events nobody here received: the channel is
        reported to the sink, whose consumers check their cursors against storage and get a
        gap (or catch up) instead of a silent hole. A channel whose every new row vanished
        (expired unseen) is not touched by any row, so a hole also owes an audit of all watched
        channels, run at most every ``AUDIT_INTERVAL`` seconds to keep bursts cheap; until it
        has run, every touched channel is checked on each poll.
        """
        assert self.cursor is not None
        present = {(row[1], (row[2], row[3])) for row in rows} if own else set()
        mine_gone = sum(1 for m, _ in own if (m.channel, m.key) not in present)
        holes = top - self.cursor - len(rows) - mine_gone
        now = time.monotonic()
        if holes > 0:
            self.audit_owed = True
        audit = self.audit_owed and now >= self._next_audit
        marks = self.marks
        if audit:
            self.audit_owed = False
            self._next_audit = now + AUDIT_INTERVAL
            channels = list(marks)
        elif self.audit_owed:
            # Until the audit runs, check every channel that moves on: its mark must not pass
            # an unreported hole.
            touched = {row[1] for row in rows} | {m.channel for m, _ in own}
            channels = [c for c in touched if c in marks]
        else:
            return []
        chains: dict[str, list[Own]] = {}
        for entry in own:
            chains.setdefault(entry[0].channel, []).append(entry)
        missed = []
        for name, trimmed in trimmed_marks(conn, channels):
            covered = marks[name]
            for message, prev in sorted(chains.get(name, ()), key=lambda e: e[0].key):
                if prev <= covered < message.key:
                    covered = message.key
            if trimmed > covered:
                missed.append(name)
                marks[name] = max(marks[name], trimmed)
        return missed

    def sweep_due(self) -> bool:
        return time.monotonic() >= self._next_sweep

    def sweep(self, conn: sqlite3.Connection) -> None:
        """Delete the history of channels whose ``expire_after`` has passed."""
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        try:
            conn.execute("BEGIN IMMEDIATE")
            expired = conn.execute(
                "SELECT name FROM rt_channels WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (system_ms(),),
            ).fetchall()
            for (name,) in expired:
                expire(conn, name)
            conn.execute("COMMIT")
        except sqlite3.Error:
            # Another process holds the write lock for longer than busy_timeout; sweep later.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
