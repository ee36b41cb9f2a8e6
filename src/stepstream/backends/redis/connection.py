"""The command connections of the Redis backend, its scripts and key names, and the one place
driver exceptions become stepstream's (``map_redis_errors``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions

from stepstream.backends.redis import scripts
from stepstream.errors import BackendError, BackendUnavailable, ConfigurationError

DRIVER_ERRORS = (redis.exceptions.RedisError, OSError)
"""What redis-py raises: its own exceptions, and socket errors and timeouts (``OSError``)."""


def backend_error(exc: BaseException, where: str, *, unavailable: bool = False) -> BackendError:
    """The stepstream error for a driver's exception ``exc`` (its ``__cause__``): a lost or
    refused connection or a timeout is ``BackendUnavailable`` (as is anything when
    ``unavailable``), any other failure ``BackendError``."""
    lost = redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError
    error = (BackendUnavailable if unavailable or isinstance(exc, lost) else BackendError)(
        f"{where}: {exc}"
    )
    error.__cause__ = exc
    return error


@contextlib.contextmanager
def map_redis_errors(where: str, *, unavailable: bool = False) -> Iterator[None]:
    """Raise driver exceptions inside as stepstream's (``backend_error``), ``from`` the
    original. Every command the backend sends runs inside it."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise backend_error(exc, where, unavailable=unavailable) from exc


class Connection:
    """The pool of command connections (``client``), the registered scripts and the key
    names of one backend."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        # For messages: errors reach logs and 503 bodies, the password must not.
        parts = urlsplit(url)
        hidden = parts.netloc.rpartition("@")
        self.shown = urlunsplit(parts._replace(netloc=f"***@{hidden[2]}")) if hidden[1] else url
        self.where = f"Redis at {self.shown}"
        self.prefix = prefix
        self.client: aioredis.Redis | None = None
        self.append_script: Any = None
        self._scripts: dict[str, Any] = {}

    async def open(self) -> None:
        try:
            # A burst of SSE connects (a server restart) issues many reads at once: wait for a
            # pooled connection instead of failing with "Too many connections".
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, decode_responses=True, max_connections=64, timeout=30
            )
            client = aioredis.Redis(connection_pool=pool)
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {self.shown!r}: {exc}") from exc
        try:
            with map_redis_errors(f"cannot reach Redis at {self.shown}", unavailable=True):
                await client.ping()
        except BackendError:
            await client.aclose(close_connection_pool=True)
            raise
        self.append_script = client.register_script(scripts.APPEND)
        self._scripts = {name: client.register_script(text) for name, text in scripts.RUNS.items()}
        self.client = client
        try:
            while await self.script("migrate", 500):
                pass
        except BackendError:
            self.client = None
            with contextlib.suppress(*DRIVER_ERRORS):
                await client.aclose(close_connection_pool=True)
            raise

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.aclose(close_connection_pool=True)

    def redis(self) -> aioredis.Redis:
        """The client, or ``BackendUnavailable`` when the backend is not open."""
        if self.client is None:
            raise BackendUnavailable(f"Redis backend {self.shown} is not open (or was closed)")
        return self.client

    async def script(self, name: str, *args: str | int) -> Any:
        """Run the run script ``name`` (``scripts.RUN_SCRIPTS``) with the key prefix first."""
        self.redis()
        with map_redis_errors(self.where):
            return await self._scripts[name](keys=[], args=[self.prefix, *args])

    def stream_key(self, channel: str) -> str:
        return f"{self.prefix}rt:{{{channel}}}"

    def channel_of(self, key: str) -> str:
        return key[len(self.prefix) + 4 : -1]
