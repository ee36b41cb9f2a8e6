"""The scale-out backend: any Redis >= 6.2 (or Valkey), plain ``redis://`` or TLS ``rediss://``.

Key layout of a channel ``C`` under the key prefix ``P`` (default ``stepstream:``)::

    P rt:{C}        stream    the history; entry fields ``e`` (event name) and ``d`` (JSON data)
    P rt:{C}        pub/sub   live delivery; the payload is ``<id>\\n<event>\\n<json>``
    P rt:{C}:meta   hash      ``last`` (newest id ever) and ``trimmed`` (newest id trimmed away)

The braces make both keys of a channel share one hash slot. One Lua script (``append_event``)
appends, trims and publishes, so "stored" and "delivered" cannot disagree after a crash, and
publish order equals id order even with many concurrent emitters. Each process holds one pub/sub
connection for all its live channels; if it drops, the hub is told (``LiveSink.lost``) and
subscribers resume from their cursors rather than silently missing events. A connection can also
die silently (a half-open socket behind a NAT or a paused server): it is PINGed every
``live_check_interval`` seconds, and one that returns nothing at all within that time counts as
lost.

Workflow runs (``runs.py``, ``recovery.py``; Lua in ``lua/``, see ``scripts.py``)::

    P wf:seq                 counter   creation order of runs
    P wf:run:<id>            hash      id, workflow, state, created_at, completed_at, due_at,
                                       lease_owner, lease_until, parent, seq, and each meta
                                       field as JSON under ``m.<name>`` (``m.payload``, ...)
    P wf:steps:<id>          hash      position -> StepRecord JSON
    P wf:due:<workflow>      zset      unleased RUN_STARTED runs of a workflow with a due_at,
                                       by due_at (a worker claims only workflows it has)
    P wf:leased:<workflow>   zset      leased RUN_STARTED runs of a workflow, by lease_until
    P wf:waits:<event>       set       ``<run id>|<position>`` of steps waiting for the event
    P wf:waitsof:<id>        set       ``<position>|<event>``: the run's waits, to drop them
    P wf:lookback:<id>       hash      event -> data notified to the run before it waited
    P wf:runs                zset      every run by seq (listing, newest first)
    P wf:runs:state:<S>      zset      runs in state S by seq
    P wf:runs:workflow:<W>   zset      runs of workflow W by seq
    P wf:runs:sw:<S>:<W>     zset      runs of workflow W in state S by seq
    P wf:labels:<id>         set       the run's labels (its label index entries, for Lua)
    P wf:runs:label:<L>      zset      runs labelled L by seq
    P wf:runs:ls:<S>:<L>     zset      runs labelled L in state S by seq
    P wf:runs:lw:<n>:<L>:<W> zset      runs labelled L of workflow W by seq (n: L's length in
                                       bytes, so names containing ':' cannot collide)
    P wf:runs:lsw:<S>:<n>:<L>:<W>
                             zset      runs labelled L of workflow W in state S by seq
    P wf:layout              string    "2" once an earlier layout's keys were migrated

Flow control of a key ``K`` and named entries (``flow.py``)::

    P wf:flow:slots:<K>      hash      ``<run id>|<position>`` -> ``<owner>|<epoch>`` of the
                                       claim that took the slot (it counts while that claim
                                       holds the run, judged and pruned by each acquire)
    P wf:flow:starts:<K>     zset      ``<at>|<run id>|<position>`` by at: starts in the rate
                                       window (expires a period after the newest)
    P wf:flow:waiters:<K>    zset      ``<run id>|<position>`` by since: the line for a slot
    P wf:entries:<kind>      hash      key -> JSON text

A filter by state, workflow and label has one index per combination, so a page of any
filter reads only what it shows; creation-time bounds are bisected in that index (runs get
their seq in creation order, see ``lua/find_runs.lua``). Deleting a run removes all of the
above that names it, and its channel's stream and meta.

Each state change is one Lua script that also appends the events reporting it (the append
script's code, shared), so a run's log and its channel history cannot disagree.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stepstream.backends.redis.connection import Connection
from stepstream.backends.redis.flow import RedisFlow
from stepstream.backends.redis.realtime import RedisRealtime
from stepstream.backends.redis.recovery import RedisRecovery
from stepstream.errors import ConfigurationError

__all__ = ["RedisBackend"]


class RedisBackend(RedisRealtime, RedisRecovery, RedisFlow):
    """``redis://[:password@]host:6379/0`` or ``rediss://...`` (TLS). Query options
    ``prefix=<key prefix>`` (default ``stepstream:``) and ``live_check_interval=<seconds>``
    (default 5: a silently dead pub/sub connection is noticed within twice that)."""

    def __init__(
        self, url: str, *, prefix: str = "stepstream:", live_check_interval: float = 5.0
    ) -> None:
        if live_check_interval <= 0:
            raise ConfigurationError("live_check_interval must be positive seconds")
        self.url = url
        self._open_lock = asyncio.Lock()
        super().__init__(Connection(url, prefix), live_check_interval)

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        parts = urlsplit(url)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        prefix = options.pop("prefix", "stepstream:")
        live: dict[str, float] = {}
        if "live_check_interval" in options:
            try:
                live["live_check_interval"] = float(options.pop("live_check_interval"))
            except ValueError as exc:
                raise ConfigurationError(f"{url!r}: live_check_interval must be seconds") from exc
        # Every other option (ssl_cert_reqs, socket_timeout, ...) is redis-py's to interpret.
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return cls(urlunsplit(parts._replace(query=query)), prefix=prefix, **live)

    async def open(self) -> None:
        """Connect, register the scripts and migrate an earlier key layout. Idempotent."""
        async with self._open_lock:
            if self._conn.client is not None:
                return
            await self._conn.open()
            # No silent reconnects on the pub/sub connection: events published while it was
            # down would be lost without anyone knowing. Errors surface and subscribers resume.
            self._live_client = aioredis.Redis.from_url(
                self.url, decode_responses=True, retry=Retry(NoBackoff(), 0)
            )

    async def close(self) -> None:
        """Stop live delivery and close every connection. Idempotent."""
        live, self._live_client = self._live_client, None
        await self._stop_reader()
        await self._conn.close()
        if live is not None:
            await live.aclose(close_connection_pool=True)
        # Unbound: the next open may be on another event loop.
        self._open_lock, self._subscribe_lock = asyncio.Lock(), asyncio.Lock()
