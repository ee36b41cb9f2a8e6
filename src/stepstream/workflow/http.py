"""The request of a durable HTTP call (``context.call``): what it stores as its result, and
what its error says when it fails (in one line, without httpx's frames or the URL's secrets)."""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from typing import Any

import httpx

# Credentials the server hands out (cookies, auth challenges) are not stored in the run's log
# nor streamed on its channel.
PRIVATE_RESPONSE_HEADERS = frozenset(
    {"set-cookie", "set-cookie2", "www-authenticate", "proxy-authenticate", "authorization"}
)


async def call(
    client: httpx.AsyncClient,
    url: str,
    method: str,
    body: Any,
    headers: dict[str, str],
    seconds: float,
) -> dict[str, Any]:
    """``{"status", "headers", "body"}`` (a JSON body parsed); a network failure or a timeout
    raises ``ConnectionError`` / ``TimeoutError`` saying which request failed."""
    content: Any = body
    if body is not None and not isinstance(body, str | bytes):
        content = json.dumps(body)
        headers = {"content-type": "application/json", **headers}
    try:
        response = await client.request(
            method, url, content=content, headers=headers, timeout=seconds
        )
    except httpx.TimeoutException:
        raise TimeoutError(f"{method} {shown(url)}: no answer within {seconds:g}s") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ConnectionError(f"{method} {shown(url)}: {exc} ({type(exc).__name__})") from None
    try:
        parsed: Any = response.json()
    except ValueError:
        parsed = response.text
    kept = {
        name: value
        for name, value in response.headers.items()
        if name.lower() not in PRIVATE_RESPONSE_HEADERS
    }
    return {"status": response.status_code, "headers": kept, "body": parsed}


def shown(url: str) -> str:
    """``url`` for an error message, which is stored and streamed: without its user,
    password and query."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    with contextlib.suppress(ValueError):  # a port that is not a number: left out
        netloc += f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
