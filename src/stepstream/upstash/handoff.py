"""Handing what the SDK publishes straight to the delivery waiting for it, in this process.

The SDK publishes a step's result while the delivery that ran it is still open. When that
delivery's worker runs in the process whose route receives the publish (one server with its
in-process workers, the common deployment), the route hands the message to the delivery,
which records it at once, fenced by its lease, before the route answers: the publish is
acknowledged only once it is stored, as through the inbox, but in one write instead of an
entry written, read back and deleted, and the worker knows it without reading the inbox.

Anything else still goes through the inbox (``gateway.Gateway.to_inbox``): a publish reaching
another process, one arriving when no delivery of the run is open here (a late answer of a
delivery given up on), a delivery whose lease was lost meanwhile (the next lease holder drains
the inbox), and the messages whose handling outlives the request (calls, invokes, plans).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from stepstream.workflow.engine import Engine

TAKEN = frozenset({"step", "wait", "finish"})  # the inbox message kinds a delivery takes


class Receiver(Protocol):
    async def take(self, message: dict[str, Any]) -> bool | None:
        """Record ``message`` (an inbox message); whether it was new, ``None`` if not taken."""


OPEN: weakref.WeakKeyDictionary[Engine, dict[str, Receiver]] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def listening(engine: Engine, run_id: str, receiver: Receiver) -> Iterator[None]:
    """While the block runs, messages for ``run_id`` published to this process go to
    ``receiver``."""
    receivers = OPEN.setdefault(engine, {})
    receivers[run_id] = receiver
    try:
        yield
    finally:
        if receivers.get(run_id) is receiver:
            del receivers[run_id]


async def hand(engine: Engine, run_id: str, message: dict[str, Any]) -> bool | None:
    """Hand ``message`` to the run's delivery open in this process: whether it was new, or
    ``None`` if it was not taken (no delivery open here, a kind that goes through the inbox,
    or the delivery's lease is lost): the caller queues it in the inbox."""
    if message["kind"] not in TAKEN:
        return None
    receiver = OPEN.get(engine, {}).get(run_id)
    if receiver is None:
        return None
    # Shielded: a request given up on (the client went away) must not leave the delivery
    # unaware of a write that its storage still completes.
    return await asyncio.shield(asyncio.ensure_future(receiver.take(message)))
