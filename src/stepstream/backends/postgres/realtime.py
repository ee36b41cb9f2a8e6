"""The realtime half of the Postgres backend: channels in ``channels`` / ``events``, appended by
``ss_append`` (ids, trimming, expiry and the NOTIFY in one call), watched by ``live.py``."""

from __future__ import annotations

from collections.abc import Collection

from stepstream.backends.base import LiveSink
from stepstream.backends.postgres.connection import Database
from stepstream.backends.postgres.live import Listener
from stepstream.errors import BackendError, BackendUnavailable
from stepstream.records import CursorKey, HistoryPolicy, Message, format_cursor


def expire_ms(policy: HistoryPolicy) -> int | None:
    return None if policy.expire_after is None else max(1, int(policy.expire_after * 1000))


class PostgresRealtime:
    """``RealtimeStore`` on the pool of ``_db``, live delivery by ``_listener``."""

    _db: Database
    _listener: Listener

    async def ping(self) -> None:
        try:
            await self._db.value("SELECT 1")
        except BackendError as exc:  # any failure to answer means: not reachable
            raise BackendUnavailable(f"cannot reach {self._db.where}: {exc}") from exc

    def set_sink(self, sink: LiveSink) -> None:
        self._listener.sink = sink

    async def append(self, channel: str, event: str, raw: str, policy: HistoryPolicy) -> Message:
        ids = await self._db.value(
            "SELECT ss_append($1, $2, $3, $4, $5)",
            channel,
            [event],
            [raw],
            policy.max_length,
            expire_ms(policy),
        )
        return Message(ids[-1], channel, event, raw)

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
        rows = await self._db.fetch(
            "SELECT * FROM ss_read($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            channel,
            *(after or (None, None)),
            *(before or (None, None)),
            start_ms,
            end_ms,
            limit,
            page,
            read=True,
        )
        return [
            Message(f"{ms}-{seq}", channel, event, data, (ms, seq)) for ms, seq, event, data in rows
        ]

    async def latest_id(self, channel: str) -> str | None:
        rows = await self._db.fetch(
            "SELECT last_ms, last_seq, length, expires_at, ss_now() FROM channels WHERE name = $1",
            channel,
            read=True,
        )
        if not rows:
            return None
        last_ms, last_seq, length, expires_at, now = rows[0]
        if length == 0 or (expires_at is not None and expires_at <= now):
            return None
        return format_cursor((last_ms, last_seq))

    async def listen(self, channels: Collection[str]) -> None:
        await self._listener.watch(channels)

    async def unlisten(self, channels: Collection[str]) -> None:
        await self._listener.unwatch(channels)


__all__ = ["PostgresRealtime", "expire_ms"]
