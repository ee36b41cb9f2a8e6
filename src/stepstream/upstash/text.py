"""What clients send as text, read strictly: JSON as JavaScript's ``JSON.parse`` reads it,
counts, durations and page cursors, and header names and values a delivery can carry. Each
is a ``BadRequest`` (or a ``ValueError`` for JSON) naming what is wrong, never a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from stepstream.errors import BadRequest

DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
MAX_HEADER_COUNT = 999_999_999  # the largest count a header may give (retries, parallelism, rate)
MAX_DURATION_MS = 100 * 365 * 86_400_000  # a delay, timeout or period: at most 100 years
MAX_CURSOR = 2**63  # a page cursor is a position in the run index (digits below this)
TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110 token)
VALUE = re.compile(r"[^\x00\r\n]*")  # a header value cannot end the line it is on


def loads(text: str | bytes) -> Any:
    """``json.loads`` as JavaScript's ``JSON.parse`` reads: ``ValueError`` if ``text`` is not
    JSON (``NaN`` and ``Infinity`` are not), or nested deeper than Python's parser goes (a
    ``RecursionError`` otherwise: a 500)."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply to be read") from None


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")


def query_ms(params: Mapping[str, str], name: str) -> int | None:
    """The query parameter ``name`` as unix milliseconds (``fromDate``, ``toDate``), if given."""
    text = params.get(name)
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 16:
        raise BadRequest(f"{name} must be unix milliseconds (digits only)")
    return int(text)


def query_cursor(params: Mapping[str, str]) -> str | None:
    """The ``cursor`` query parameter, as the previous page gave it (digits), if given."""
    text = params.get("cursor") or None
    if text is not None and (not text.isascii() or not text.isdigit() or int(text) >= MAX_CURSOR):
        raise BadRequest("cursor must be the cursor the previous page answered")
    return text


def count_of(text: str) -> int | None:
    """``text`` as a count (ASCII digits, at most ``MAX_HEADER_COUNT``), else ``None``
    (``isdigit`` alone takes ``"²"``, which ``int`` refuses)."""
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_HEADER_COUNT)):
        return None
    return int(text)


def deliverable(name: str, value: str) -> str:
    """``value``, if a request can carry header ``name`` with it (HTTP/1.1, ASCII as h11 and
    httpx send headers: ``connections.request_head``'s check); else ``BadRequest`` naming it,
    so the trigger fails rather than every delivery."""
    if not TOKEN.fullmatch(name) or not VALUE.fullmatch(value) or not value.isascii():
        raise BadRequest(
            f"header {name[:60]!r} can not be delivered: a header name is letters, digits and "
            "-!#$%&'*+.^_`|~, its value ASCII text without line breaks or NUL"
        )
    return value


def duration_ms(text: str, what: str) -> int:
    """``"10s"``, ``"1h30m"`` or bare seconds, in ms (at most ``MAX_DURATION_MS``)."""
    text = text.strip()
    ms: float
    if (seconds := count_of(text)) is not None:
        ms = seconds * 1000
    else:
        parts = DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise BadRequest(f"{what} {text[:40]!r} is not a duration such as 10s or 1h30m")
        ms = sum(float(number) * UNIT_MS[unit] for number, unit in parts)
    if ms > MAX_DURATION_MS:
        raise BadRequest(f"{what} {text[:40]!r} is longer than 100 years")
    return int(ms)
