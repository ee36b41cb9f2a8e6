"""The realtime half of the SQLite backend: appending, reading and watching channels."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Any

from stepstream.backends.sqlite.channels import (
    append_many,
    channel_state,
    last_ids,
    top_position,
)
from stepstream.backends.sqlite.connection import Database
from stepstream.errors import CursorUnavailable
from stepstream.records import CursorKey, HistoryPolicy, Message, format_cursor


class SQLiteRealtime:
    """``RealtimeStore`` on the database thread of ``_db``."""

    _db: Database

    async def ping(self) -> None:
        await self._db.submit(lambda conn: conn.execute("SELECT 1").fetchone(), write=False)

    async def append(self, channel: str, event: str, raw: str, policy: HistoryPolicy) -> Message:
        return await self._db.submit(
            lambda conn: append_many(conn, channel, [(event, raw)], policy)[-1], write=True
        )

    async def read(
        self,
        channel: str,
        *,
        after: CursorKey | None = None,
        before: CursorKey | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
        page: int | None = None,
    ) -> list[Message]:
        where = ["channel = ?"]
        args: list[Any] = [channel]
        if after is not None:
            where.append("(ms, seq) > (?, ?)")
            args.extend(after)
        if before is not None:
            where.append("(ms, seq) < (?, ?)")
            args.extend(before)
        if start_ms is not None:
            where.append("ms >= ?")
            args.append(start_ms)
        if end_ms is not None:
            where.append("ms <= ?")
            args.append(end_ms)
        sql = f"SELECT ms, seq, event, data FROM rt_events WHERE {' AND '.join(where)}"
        if limit is not None:
            sql, args = f"{sql} ORDER BY ms DESC, seq DESC LIMIT ?", [*args, limit]
        elif page is not None:
            sql, args = f"{sql} ORDER BY ms, seq LIMIT ?", [*args, page]
        else:
            sql = f"{sql} ORDER BY ms, seq"

        def read(conn: sqlite3.Connection) -> list[Message]:
            # One read transaction so the trim check and the rows come from the same snapshot.
            conn.execute("BEGIN")
            try:
                state = channel_state(conn, channel)
                if state is None:
                    return []
                if after is not None and state.trimmed > after:
                    raise CursorUnavailable(channel, format_cursor(after))
                if state.expired:
                    return []
                rows = conn.execute(sql, args).fetchall()
            finally:
                conn.execute("COMMIT")
            if limit is not None:
                rows.reverse()
            return [
                Message(f"{ms}-{seq}", channel, event, data, (ms, seq))
                for ms, seq, event, data in rows
            ]

        return await self._db.submit(read, write=False)

    async def latest_id(self, channel: str) -> str | None:
        def latest(conn: sqlite3.Connection) -> str | None:
            state = channel_state(conn, channel)
            if state is None or state.length == 0 or state.expired:
                return None
            return format_cursor(state.last)

        return await self._db.submit(latest, write=False)

    async def listen(self, channels: Collection[str]) -> None:
        requested = list(channels)
        feed = self._db.feed

        def watch(conn: sqlite3.Connection) -> None:
            names = [name for name in requested if name not in feed.marks]
            # Events up to each channel's newest id exist already; every later one is ours to
            # deliver (or to report missed). One snapshot for the cursor and those ids.
            conn.execute("BEGIN")
            try:
                if feed.cursor is None:
                    feed.cursor = top_position(conn)
                last = dict(last_ids(conn, names))
            finally:
                conn.execute("COMMIT")
            for name in names:
                feed.marks.setdefault(name, last.get(name, (0, 0)))

        await self._db.submit(watch, write=False)

    async def unlisten(self, channels: Collection[str]) -> None:
        names = list(channels)
        feed = self._db.feed

        def unwatch(conn: sqlite3.Connection) -> None:
            for name in names:
                feed.marks.pop(name, None)
            if not feed.marks:
                feed.cursor = None
                feed.audit_owed = False

        await self._db.submit(unwatch, write=False)
