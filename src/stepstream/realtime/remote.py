"""A Python subscriber for a stepstream SSE endpoint (what ``stepstream tail`` and
``trigger --follow`` use): native dialect, history, automatic resume with cursors."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from stepstream.errors import (
    DETAIL_HEADER,
    BackendUnavailable,
    CursorUnavailable,
    ValidationError,
    error_from_body,
)
from stepstream.records import Message, parse_cursor


async def subscribe_remote(
    url: str,
    channels: list[str],
    *,
    history: bool | int = False,
    token: str | None = None,
    channel_token: str | None = None,
    max_retries: int = 5,
    on_gap: Callable[[str, str], None] | None = None,
    after: Mapping[str, str] | None = None,
    http: httpx.AsyncClient | None = None,
) -> AsyncGenerator[Message, None]:
    """Events of ``channels`` from the SSE endpoint at ``url`` (e.g.
    ``http://127.0.0.1:8000/api/realtime``): history first if asked, then live; reconnects
    from the last id of each channel after a drop or a ``reconnect`` event, so no event is
    missed or repeated. ``token``: the server's API token (sent as a bearer header);
    ``channel_token``: a subscription token from ``realtime.token(channels)`` (sent as
    ``?token=``, as browsers do).

    If events a resume should have delivered were trimmed from history meanwhile, that is
    never a quiet hole: ``CursorUnavailable`` is raised, or, with ``on_gap``, it is called
    with the channel and the cursor and the stream goes on with what remains.

    ``after``: a cursor per channel (from ``latest_cursor``, say) to start after, as if
    resuming there: that channel's events since then come first, then live ones (not with
    ``history``, which says where to start too). ``http``: an ``httpx.AsyncClient`` to use."""
    if after and history is not False:
        raise ValidationError("subscribe_remote takes history or after, not both")
    cursors: dict[str, str] = dict(after or {})
    failures = 0
    headers = _headers(token)
    async with _streaming(http) as client:
        while True:
            params = _query(channels, cursors, history, channel_token)
            try:
                async with client.stream("GET", url, params=params, headers=headers) as response:
                    if response.status_code != 200:
                        refused = await _refusal(response)
                        if response.status_code != 503:
                            raise refused
                        # Storage is down on the server (or it is starting): retry like a
                        # dropped connection, as browsers' EventSource does.
                        failures = await _pause(failures, max_retries, refused)
                        continue
                    failures = 0
                    async for payload in _frames(response):
                        if "type" in payload and "event" not in payload:
                            if _system(payload, cursors, on_gap) == "reconnect":
                                break
                            continue
                        channel, id = payload["channel"], payload["id"]
                        last = cursors.get(channel)
                        if last is not None and parse_cursor(id) <= parse_cursor(last):
                            continue
                        cursors[channel] = id
                        yield Message(id, channel, payload["event"], json.dumps(payload["data"]))
            except httpx.HTTPError as exc:
                error = BackendUnavailable(f"cannot stream from {url}: {exc}")
                error.__cause__ = exc
                failures = await _pause(failures, max_retries, error)


@contextlib.asynccontextmanager
async def _streaming(http: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    """``http``, or a client of its own (closed after) whose reads outlast keep-alives."""
    if http is not None:
        yield http
        return
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client:
        yield client


def _system(
    payload: dict[str, Any], cursors: dict[str, str], on_gap: Callable[[str, str], None] | None
) -> str:
    """Take in one of the server's own frames (not an event); its type."""
    kind = str(payload["type"])
    if kind == "connected":
        cursors.setdefault(payload["channel"], payload["cursor"])
    elif kind == "gap":
        channel, cursor = payload["channel"], payload["cursor"]
        if on_gap is None:
            raise CursorUnavailable(channel, cursor)
        on_gap(channel, cursor)
    return kind


async def history_page(
    base_url: str,
    channel: str,
    token: str | None = None,
    *,
    limit: int = 1,
    after: str | None = None,
) -> list[dict[str, Any]]:
    """``GET /api/realtime/history`` of the server at ``base_url``: the newest ``limit``
    stored events of ``channel`` (after the cursor ``after``, if given), oldest first, as the
    server sends them (``id``, ``event``, ``channel``, ``data``)."""
    url = base_url.rstrip("/") + "/api/realtime/history"
    params = {"channel": channel, "limit": str(limit)} | ({"after": after} if after else {})
    headers = _headers(token) | {"accept": "application/json"}
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url, params=params, headers=headers)
            if response.status_code != 200:
                raise await _refusal(response)
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"cannot read history from {url}: {exc}") from exc
    try:
        messages = response.json()["messages"]
        if not isinstance(messages, list):
            raise TypeError(type(messages).__name__)
    except (ValueError, KeyError, TypeError):
        text = response.text[:300]
        raise BackendUnavailable(f"{url} answered 200 without a history page: {text}") from None
    return messages


async def latest_cursor(base_url: str, channel: str, token: str | None = None) -> str:
    """The id of ``channel``'s newest stored event on the server at ``base_url``, or ``0-0``
    if none is stored (none yet, or all trimmed or expired)."""
    messages = await history_page(base_url, channel, token)
    return str(messages[-1]["id"]) if messages else "0-0"


def _headers(token: str | None) -> dict[str, str]:
    headers = {"accept": "text/event-stream", DETAIL_HEADER: "1"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


async def _pause(failures: int, max_retries: int, error: Exception) -> int:
    """One more failure in a row: raise ``error`` past ``max_retries``, else back off and
    return the new count."""
    failures += 1
    if failures > max_retries:
        raise error
    await asyncio.sleep(min(0.2 * 2**failures, 5))
    return failures


async def _refusal(response: httpx.Response) -> Exception:
    """The error a non-200 answer stands for: the server's own (a refused token, a bad
    query...), rebuilt; anything else (a proxy's page) says what answered."""
    await response.aread()
    try:
        return error_from_body(response.json(), response.status_code)
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = response.text[:300]
        return BackendUnavailable(f"{response.url} answered {response.status_code}: {text}")


async def _frames(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []


def _query(
    channels: list[str], cursors: dict[str, str], history: bool | int, token: str | None
) -> tuple[tuple[str, str], ...]:
    """The native dialect's query: the channels, where to resume each, history, the token."""
    params = [("dialect", "native"), *(("channel", channel) for channel in channels)]
    params += [(f"last_ack_{c}", cursors[c]) for c in channels if c in cursors]
    if history is not False:
        params.append(("history", "true" if history is True else str(history)))
    if token:
        params.append(("token", token))
    return tuple(params)
