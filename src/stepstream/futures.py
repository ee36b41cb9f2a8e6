"""Settling an asyncio future from code that may find its waiter gone."""

from __future__ import annotations

import asyncio
from typing import Any


def settle(
    future: asyncio.Future[Any], value: Any = None, error: BaseException | None = None
) -> None:
    """Give ``future`` its outcome (``error`` if given, else ``value``), unless it already has
    one: its waiter was cancelled, or timed out."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
