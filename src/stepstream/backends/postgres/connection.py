"""The connection pool of the Postgres backend, its migrations, and ``map_postgres_errors``: the
one place asyncpg's exceptions become stepstream's.

Every storage operation is one call of a server-side function (``migrations/*.sql``), so it runs
in one implicit transaction and one round trip. A deadlock or serialization failure rolled the
call back entirely, so it is retried here; a lost connection is ``BackendUnavailable`` (the
engine hands the run back and tries again later), never a failed run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from stepstream.errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    CursorUnavailable,
    LeaseLost,
    RunConflict,
    RunNotFound,
    ValidationError,
)

log = logging.getLogger("stepstream.postgres")

SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")
MIGRATION_LOCK = 0x5374_6570_7374_7265  # pg_advisory_xact_lock key: "Stepstre"
KEEP_IDLE = 60.0  # seconds a kept connection may go unused before it goes back to the pool
RELEASE_WAIT = 1.0  # seconds a cancelled call still waits for its connection's release
RETRIES = 5  # deadlock / serialization failure: the call was rolled back, run it again
# PostgreSQL refusing one more connection (max_connections, a role's CONNECTION LIMIT):
# a call waits up to this long, in seconds, for a connection of this process to come free.
FULL_WAIT = 10.0
FULL = "53300"  # too_many_connections

# SQLSTATEs: connection exception (08), operator intervention (57P01 shutdown, 57P02 crash,
# 57P03 cannot connect now), insufficient resources (53), read-only transaction after a
# failover (25006), query canceled by statement_timeout (57014).
_UNAVAILABLE_CLASSES = ("08", "53", "57")
_UNAVAILABLE_CODES = {"25006", "40001", "40P01"}
_RETRY_CODES = {"40001", "40P01"}


@contextlib.contextmanager
def _bad_url(where: str) -> Iterator[None]:
    """asyncpg's ``ValueError`` for a URL it cannot parse (a port that is not a number, say)
    as a ``ConfigurationError``."""
    try:
        yield
    except ValueError as exc:
        raise ConfigurationError(f"bad URL for {where}: {exc}") from None


@contextlib.contextmanager
def map_postgres_errors(where: str, *, unavailable: bool = False) -> Iterator[None]:
    """Raise asyncpg's exceptions inside as stepstream's, ``from`` the original: storage's own
    refusals (``SS001`` ``LeaseLost``, ``SS002`` ``RunConflict``, ``SS003`` ``RunNotFound``,
    ``SS004`` ``CursorUnavailable``) as themselves; a lost or refused connection, a shutdown,
    a timeout, a deadlock that kept failing as ``BackendUnavailable``; text PostgreSQL cannot
    store (a NUL character) as ``ValidationError``; anything else as ``BackendError``
    (``BackendUnavailable`` when ``unavailable``, as while opening)."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        code = exc.sqlstate or ""
        message = _text_of(exc)
        if code == "SS001":
            raise LeaseLost(message) from exc
        if code == "SS002":
            raise RunConflict(message) from exc
        if code == "SS003":
            raise RunNotFound(message) from exc
        if code == "SS004":
            raise CursorUnavailable(str(getattr(exc, "detail", "")), message) from exc
        if code in ("22021", "22P05"):
            raise ValidationError(
                f"PostgreSQL cannot store this text ({message}): remove NUL characters "
                "from ids and names"
            ) from exc
        if code[:2] in _UNAVAILABLE_CLASSES or code in _UNAVAILABLE_CODES or unavailable:
            raise BackendUnavailable(f"{where}: {message}") from exc
        raise BackendError(f"{where}: {message}") from exc
    except (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError) as exc:
        # InternalClientError: a pooled connection the server closed during a restart can fail
        # with "cannot switch to state ..." instead of a connection error.
        raise BackendUnavailable(f"{where}: {_text_of(exc)}") from exc


def _text_of(exc: BaseException) -> str:
    """What happened, in words: asyncpg leaves ``message`` ``None`` on some connection errors
    (and then ``str()`` fails)."""
    message = getattr(exc, "message", None)
    if message:
        return str(message)
    try:
        return str(exc) or type(exc).__name__
    except Exception:
        return type(exc).__name__


def check_schema(name: str) -> str:
    if not SCHEMA_NAME.match(name):
        raise ConfigurationError(
            f"schema {name!r}: use lowercase letters, digits and underscores, at most 40 "
            "characters, not starting with a digit (for example ?schema=stepstream_staging)"
        )
    return name


def migrations() -> list[tuple[int, str, str]]:
    """``(version, file name, SQL)`` of every migration shipped, in order."""
    folder = resources.files("stepstream.backends.postgres") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text("utf-8")))
    return sorted(found)


class Database:
    """An asyncpg pool whose connections use ``schema`` (``search_path``).

    A call takes a connection from ``_idle`` (the connections this process keeps between
    calls, newest on top) and puts it back after, without the pool's acquire and release:
    those cost 50 µs of the event loop's time per call here (a task and its wake-ups),
    7 % of a workflow step (``bench/pg_pool.py``). The pool still makes and bounds the
    connections (``pool_size``, and one for urgent calls), hands out one when none is kept,
    gets one back while a call waits for one in ``acquire``, each one a call failed on (it
    closes a broken one and connects afresh on the next acquire), and each one unused for
    ``KEEP_IDLE`` seconds (it closes those after its own 5 idle minutes): a process holds no
    more connections than its load needs."""

    def __init__(self, dsn: str, schema: str, pool_size: int, shown: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.where = f"PostgreSQL at {shown}"
        # stepstream.notify: appends NOTIFY only watched channels (migration 6).
        self.settings = {"search_path": schema, "stepstream.notify": "watched"}
        if "application_name" not in parse_qs(urlsplit(dsn).query):
            # ``?application_name=`` in the URL names a process in pg_stat_activity instead.
            self.settings["application_name"] = "stepstream"
        self.pool: asyncpg.Pool | None = None
        # Kept connections with when each was put back, least recently used first.
        self._idle: list[tuple[asyncpg.pool.PoolConnectionProxy, float]] = []
        self._waiting = 0  # calls waiting in pool.acquire()
        # Every call but an urgent one takes one of ``pool_size`` turns, and the pool holds
        # one connection more: it is always there for the urgent (a worker's heartbeat, which
        # never waits for a lock), however many calls wait meanwhile for rows another
        # transaction holds (an operator's, left open). Made again by ``close``, like the
        # lock: each belongs to the event loop it first waited on, and a backend closed may be
        # opened again under another (a loop per test, per job).
        self._ordinary = asyncio.Semaphore(pool_size)
        self._open_lock = asyncio.Lock()
        self._full_logged = -math.inf  # loop time of the last warning that the server was full

    async def open(self) -> None:
        async with self._open_lock:
            if self.pool is not None:
                return
            with (
                _bad_url(self.where),
                map_postgres_errors(f"cannot connect to {self.where}", unavailable=True),
            ):
                pool = await asyncpg.create_pool(
                    self.dsn,
                    # No floor to keep: asyncpg logs a traceback each time it fails to restore
                    # one while the server is down (the next call reconnects anyway).
                    min_size=0,
                    max_size=self.pool_size + 1,  # the urgent calls' connection
                    server_settings=self.settings,
                    command_timeout=30,
                    # Every use is one statement (a function call) that leaves no session state
                    # behind, so the default reset query on release (UNLISTEN *, RESET ALL, ...,
                    # awaited before a call returns) would be a round trip for nothing.
                    reset=_keep_session,
                )
            try:
                with (
                    _bad_url(self.where),
                    map_postgres_errors(f"cannot migrate {self.where}", unavailable=True),
                ):
                    async with pool.acquire() as conn:
                        await migrate(conn, self.schema)
            except BaseException:
                await pool.close()
                raise
            self.pool = pool

    async def close(self) -> None:
        async with self._open_lock:  # never beside an open: its calls would reach the new pool
            pool, self.pool = self.pool, None
            idle, self._idle = self._idle, []
            if pool is not None:
                for conn, _ in idle:  # each one, or pool.close() would wait for it
                    with contextlib.suppress(Exception):
                        await pool.release(conn)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pool.close(), 10)
        self._open_lock = asyncio.Lock()
        self._ordinary = asyncio.Semaphore(self.pool_size)

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise BackendUnavailable(f"the Postgres backend ({self.where}) is not open")
        return self.pool

    async def fetch(
        self, sql: str, *args: Any, read: bool = False, urgent: bool = False
    ) -> list[asyncpg.Record]:
        """Rows of one statement, retried while a deadlock rolls it back, and at once on
        another connection when the driver refused it unsent on one the server is closing
        (``_unsent``): a session killer closes all of them at once, and each one refused is
        closed, so after ``pool_size + 1`` of them the pool connects anew. A ``read`` (a statement
        that changes nothing) is also run again when its connection was lost in the middle
        (``_lost``); anything else then fails, since whether it took effect is unknown.
        ``urgent``: a statement that never waits for a lock, sent without waiting for a turn
        (a connection is left for it)."""
        attempt = refused = 0
        full_since: float | None = None
        while True:
            try:
                with map_postgres_errors(self.where):
                    if urgent:
                        return await self._call(sql, args)
                    async with self._ordinary:
                        return await self._call(sql, args)
            except BackendUnavailable as exc:
                cause = exc.__cause__
                again = _unsent(cause) or (read and _lost(cause))
                if again and refused <= self.pool_size:
                    refused += 1
                    continue
                if getattr(cause, "sqlstate", None) == FULL:
                    full_since = await self._wait_when_full(exc, full_since)
                    continue
                attempt += 1
                if getattr(cause, "sqlstate", None) not in _RETRY_CODES or attempt == RETRIES:
                    raise
                await asyncio.sleep(0.005 * 2 ** (attempt - 1))

    async def _wait_when_full(self, exc: BackendUnavailable, since: float | None) -> float:
        """The server refused this process one more connection (nothing was sent): the call
        waits for one of the connections the process holds to come free, as it would for a
        pool turn, rather than fail (a worker's failed save would run its step's body again;
        under load, dozens of times). Past ``FULL_WAIT`` it fails, naming the fix."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if since is None:
            if now - self._full_logged > 60:
                self._full_logged = now
                log.warning("%s", self._full_advice(exc))
            since = now
        if now - since > FULL_WAIT:
            raise BackendUnavailable(self._full_advice(exc)) from exc.__cause__
        await asyncio.sleep(0.01 + 0.09 * random.random())  # apart, not all at once
        return since

    def _full_advice(self, exc: BackendUnavailable) -> str:
        return (
            f"{exc}; a process opens up to pool_size + 1 connections ({self.pool_size + 1}), "
            "a worker pool_size + 2: lower ?pool_size= or raise max_connections (README: "
            "Deployment with PostgreSQL)"
        )

    async def _call(self, sql: str, args: tuple[Any, ...]) -> list[asyncpg.Record]:
        pool = self._pool()
        conn = None
        while self._idle:
            kept, _ = self._idle.pop()
            if _usable(kept):
                conn = kept
                break
            await pool.release(kept)  # the server closed it: the pool connects anew
        if conn is None:
            self._waiting += 1
            try:
                conn = await pool.acquire()
            finally:
                self._waiting -= 1
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        except BaseException as exc:
            # Cancelled mid-call, or the call failed: the pool waits for a cancellation to
            # finish and closes a connection left unusable.
            if _unsent(exc):  # not closed yet, but dead: never handed out again
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
            await _release_whole(pool, conn)
            raise
        if self.pool is pool and not self._waiting:
            now = asyncio.get_running_loop().time()
            self._idle.append((conn, now))
            if now - self._idle[0][1] > KEEP_IDLE:  # the least recently used one
                await pool.release(self._idle.pop(0)[0])
        else:  # a call waits in the pool for a connection: this one; or the pool was closed
            await pool.release(conn)
        return rows

    async def value(self, sql: str, *args: Any, read: bool = False) -> Any:
        rows = await self.fetch(sql, *args, read=read)
        return rows[0][0] if rows else None


async def _release_whole(pool: asyncpg.Pool, conn: asyncpg.pool.PoolConnectionProxy) -> None:
    """Give ``conn`` back and wait until it is back, even when the caller is cancelled
    meanwhile (asyncpg's release goes on regardless, shielded): the caller's turn must not go
    to another call before its connection does, or that call opens one more. A cancellation
    that came meanwhile is raised afterwards, at most ``RELEASE_WAIT`` seconds later (a
    release can wait for the server up to ``command_timeout``: a stop must not)."""
    release = asyncio.ensure_future(pool.release(conn))
    loop = asyncio.get_running_loop()
    deadline: float | None = None  # cancelled meanwhile: wait this long more, not to its end
    while not release.done():
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(release)
        except asyncio.CancelledError:
            deadline = deadline or loop.time() + RELEASE_WAIT
        except TimeoutError:  # asyncpg still waits for the server (a half-open network)
            break
    if deadline is not None:
        # Left to finish alone: its failure, if any, is asyncpg's to log, not news here.
        release.add_done_callback(lambda done: done.cancelled() or done.exception())
        raise asyncio.CancelledError
    release.result()


def _usable(conn: asyncpg.pool.PoolConnectionProxy) -> bool:
    """Whether a kept connection is still open. When the server closes a connection (a
    restart, ``pg_terminate_backend``), asyncpg takes it back into the pool at once and
    detaches our proxy from it: every method of the proxy then raises ``InterfaceError``
    ("released back to the pool"), ``is_closed()`` included."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


def _unsent(exc: BaseException | None) -> bool:
    """Whether asyncpg refused a call before sending anything, so that running it again on
    another connection cannot run it twice: the server's FATAL error (``pg_terminate_backend``,
    a shutdown) reached the connection while it was idle and its close has not yet, which
    leaves asyncpg's protocol consuming that error, and the next call fails as it switches
    state, before its first write ("cannot switch to state 12; another operation (2) is in
    progress")."""
    return isinstance(exc, asyncpg.InternalClientError) and str(exc).startswith(
        "cannot switch to state"
    )


def _lost(exc: BaseException | None) -> bool:
    """Whether the connection was lost while the statement ran: closed under it, or the server
    ending the session (``pg_terminate_backend``: ``57P01``; a crash: ``57P02``)."""
    if isinstance(exc, asyncpg.ConnectionDoesNotExistError):
        return True
    return getattr(exc, "sqlstate", None) in ("57P01", "57P02")


async def _keep_session(conn: object) -> None:
    """Release a pooled connection as it is (see ``Database.open``)."""


async def migrate(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, schema: str) -> None:
    """Create ``schema`` and bring it to the newest version, forward only, in one transaction
    under an advisory lock: processes starting together apply each migration exactly once.
    A database migrated by a newer stepstream is refused rather than used half-understood."""
    shipped = migrations()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        newest = shipped[-1][0] if shipped else 0
        if current > newest:
            raise ConfigurationError(
                f"schema {schema!r} is at version {current}, newer than this stepstream knows "
                f"({newest}): upgrade stepstream on this machine"
            )
        for version, name, sql in shipped:
            if version > current:
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES ($1, $2)", version, name
                )
