"""The embedded default backend: one SQLite file, safe for several processes on one machine.

All database work runs on one thread per backend instance (``connection.py``, with group
commit); the realtime half (``realtime.py``, live delivery in ``live.py``) and the workflow half
(``runs.py``; finding, resuming and deleting runs in ``recovery.py``; flow control in
``flow.py``) submit jobs to it. Tables: ``schema.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from stepstream.backends.base import LiveSink
from stepstream.backends.sqlite.connection import Database
from stepstream.backends.sqlite.flow import SQLiteFlow
from stepstream.backends.sqlite.realtime import SQLiteRealtime
from stepstream.backends.sqlite.recovery import SQLiteRecovery
from stepstream.backends.sqlite.runs import SQLiteRuns
from stepstream.errors import ConfigurationError

__all__ = ["SQLiteBackend"]


class SQLiteBackend(SQLiteRealtime, SQLiteRuns, SQLiteFlow, SQLiteRecovery):
    """``sqlite:///path/to/file.db`` (relative: ``sqlite:///data.db``; absolute:
    ``sqlite:////var/lib/app.db``). Query options: ``synchronous=full|normal``,
    ``poll_interval=<seconds>`` (cross-process live delivery, default 0.005)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        poll_interval: float = 0.005,
    ) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ConfigurationError(
                f"synchronous={synchronous!r}: use full (survives power loss) or normal"
            )
        self._db = Database(self.path, synchronous.upper(), poll_interval)

    @classmethod
    def from_url(cls, url: str) -> SQLiteBackend:
        parts = urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc:
            raise ConfigurationError(
                f"{url!r}: write sqlite:///relative/path.db or sqlite:////absolute/path.db "
                "(three slashes before a relative path)"
            )
        if not path:
            raise ConfigurationError(f"{url!r} names no file: write sqlite:///stepstream.db")
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        kwargs: dict[str, Any] = {}
        if "synchronous" in options:
            kwargs["synchronous"] = options.pop("synchronous")
        if "poll_interval" in options:
            try:
                kwargs["poll_interval"] = float(options.pop("poll_interval"))
            except ValueError as exc:
                raise ConfigurationError(f"{url!r}: poll_interval must be seconds") from exc
        if options:
            raise ConfigurationError(
                f"{url!r}: unknown option(s) {', '.join(sorted(options))}; "
                "known: synchronous, poll_interval"
            )
        return cls(path, **kwargs)

    async def open(self) -> None:
        """Start the database thread: connect, create the tables, migrate. Idempotent."""
        await self._db.open()

    async def close(self) -> None:
        """Stop the database thread once the jobs queued before are done. Idempotent."""
        await self._db.close()

    def set_sink(self, sink: LiveSink) -> None:
        self._db.sink = sink
