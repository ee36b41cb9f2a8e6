"""Storage backends, chosen by URL: ``sqlite:///file.db`` (the default), ``redis://`` or
``postgresql://``."""

from __future__ import annotations

import os

from stepstream.backends.base import Backend, LiveSink
from stepstream.errors import ConfigurationError

DEFAULT_URL = "sqlite:///.stepstream/stepstream.db"
ENV_VAR = "STEPSTREAM_BACKEND"

__all__ = ["DEFAULT_URL", "Backend", "LiveSink", "backend_from_url"]


def backend_from_url(url: str | None = None) -> Backend:
    """The backend a URL names; with no URL, ``$STEPSTREAM_BACKEND``, else a local SQLite file.

    >>> backend_from_url("sqlite:///app.db").url
    'sqlite:///app.db'
    """
    url = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from stepstream.backends.sqlite import SQLiteBackend

        return SQLiteBackend.from_url(url)
    if scheme in {"redis", "rediss", "unix", "valkey", "valkeys"}:
        from stepstream.backends.redis import RedisBackend

        if scheme.startswith("valkey"):
            url = "redis" + url[len("valkey") :]
        return RedisBackend.from_url(url)
    if scheme in {"postgresql", "postgres"}:
        from stepstream.backends.postgres import PostgresBackend

        return PostgresBackend.from_url(url)
    if scheme == "memory":
        from stepstream.backends.memory import MemoryBackend

        return MemoryBackend.from_url(url)
    raise ConfigurationError(
        f"unknown backend URL {url!r}: use sqlite:///path.db (embedded, the default), "
        "redis://host:6379/0 (rediss:// for TLS) or postgresql://user@host:5432/dbname"
    )
