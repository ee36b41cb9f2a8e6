"""``Guard``: what every request passes before it reaches a route of the stepstream app."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence

from starlette._utils import get_route_path
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from stepstream.auth import bearer, is_loopback, same_token
from stepstream.errors import (
    DETAIL_HEADER,
    BadRequest,
    BodyTooLarge,
    CrossOrigin,
    ForbiddenHost,
    StepstreamError,
    Unauthorized,
    UnsupportedMediaType,
)
from stepstream.realtime.sse import error_response
from stepstream.server.limits import BODY_TIMEOUT, bounded

# Routes anyone may call, by the path Starlette routes on: the dashboard's HTML shell and assets
# (no data in them), liveness, and the SSE and history endpoints (they check their own tokens).
# Everything else, a route added later included, needs the API token.
# "" is the mount point itself without its slash (``--root-path /wf``, then ``GET /wf``): like
# "/", it only redirects to the dashboard page.
PUBLIC_PATHS = frozenset({"", "/", "/healthz", "/api/realtime", "/api/realtime/history"})
PUBLIC_PREFIXES = ("/static/",)
# Routes serving another service's protocol, whose clients send bodies that are not JSON (the
# QStash gateway, ``stepstream.upstash``: the Upstash SDK ends a run with a ``text/plain``
# DELETE body). They still need the API token and pass the Origin check, which is what refuses
# a cross-site page; only the media type is not checked.
FOREIGN_PREFIXES = ("/qstash/",)
# The QStash gateway's webhook URLs (``context.createWebhook``): called by third parties that
# hold no API token. The route answers only for a run that created a hook with that random
# event id (``stepstream.upstash.hooks``), which is the credential. Exactly this shape passes.
HOOK = re.compile(
    r"/qstash/v2/workflows/hooks/[^/]{1,200}/wfr_[A-Za-z0-9_-]{1,128}/evt_[A-Za-z0-9_-]{8,64}"
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]@/]+)(?::\d{1,5})?")


class Guard:
    """What every request passes before it reaches a route, in this order:

    1. ``Host``: only ``allowed_hosts`` (by default, without a token, loopback names only: a
       DNS-rebinding page names its own host and is refused).
    2. The API token, on every route but ``PUBLIC_PATHS`` and the QStash gateway's webhook URLs
       (``HOOK``). The path is the one Starlette routes on (``root_path`` removed), so a
       ``Mount`` or ``--root-path`` prefix changes nothing. On ``/qstash/`` a QStash-style
       token (base64 JSON) whose ``Password`` is the API token is the token too.
    3. ``Origin``: a write (POST...) from another origin is refused unless it is one of
       ``cors_origins``: no cross-site form or ``fetch`` can trigger, cancel or notify.
    4. A write's body must be JSON (no "simple" cross-site ``text/plain`` request), at most
       ``max_body`` bytes, and arrive within ``body_timeout`` seconds (``limits.bounded``).
    """

    body_timeout = BODY_TIMEOUT

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        allowed_hosts: Sequence[str] | None,
        cors_origins: Sequence[str],
        max_body: int,
    ) -> None:
        self.app = app
        self.token = token
        if allowed_hosts is None and token is not None:
            allowed_hosts = ["*"]
        self.hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        self.origins = frozenset(cors_origins)
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            response = error_response(refusal, detail=DETAIL_HEADER in headers)
            await response(scope, receive, send)
            return
        if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body: nothing to bound (SSE streams)
            return
        await bounded(
            self.app, scope, receive, send, max_body=self.max_body, time_limit=self.body_timeout
        )

    def refusal(self, scope: Scope, headers: Headers) -> StepstreamError | None:
        """Why the request may not go on, or ``None``."""
        try:
            # Starlette decodes it as UTF-8 to build a URL (redirects, error pages): raw bytes
            # from a server that passes them through (uvicorn refuses them) would be a 500.
            scope["query_string"].decode()
        except UnicodeDecodeError:
            return BadRequest("the query string is not UTF-8")
        host = headers.get("host")
        if not self.host_allowed(host):
            served = "loopback names" if self.hosts is None else ", ".join(sorted(self.hosts))
            return ForbiddenHost(
                f"Host {str(host)[:100]!r} is not served here (only {served}): set "
                "STEPSTREAM_TOKEN to serve the app under other names"
            )
        if not self.authorized(scope, headers):
            return Unauthorized("send Authorization: Bearer <STEPSTREAM_TOKEN>")
        if scope["method"] in SAFE_METHODS:
            return None
        foreign = get_route_path(scope).startswith(FOREIGN_PREFIXES)
        return self.write_refusal(headers, host, any_media=foreign)

    def host_allowed(self, host: str | None) -> bool:
        if self.hosts is not None and "*" in self.hosts:
            return True
        if host is None:
            return True  # HTTP/1.0 without Host: not a browser, so not DNS rebinding
        match = HOST.fullmatch(host)
        if match is None:
            return False
        name = match.group(1).lower()
        return is_loopback(name) if self.hosts is None else name in self.hosts

    def authorized(self, scope: Scope, headers: Headers) -> bool:
        if self.token is None:
            return True
        path = get_route_path(scope)  # what the router matches routes against
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or HOOK.fullmatch(path):
            return True
        given = bearer(headers.get("authorization"))
        if same_token(given, self.token):
            return True
        # The Upstash SDK's createWebhook needs a QStash-style token (base64 JSON with a
        # UserID): on the gateway's routes, one whose Password is the API token is the token.
        return path.startswith(FOREIGN_PREFIXES) and same_token(qstash_password(given), self.token)

    def write_refusal(
        self, headers: Headers, host: str | None, *, any_media: bool = False
    ) -> StepstreamError | None:
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, host):
            return CrossOrigin(
                f"a write from origin {origin[:100]!r} is refused: add it to cors_origins to "
                "allow it"
            )
        length = headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit()):
            return BadRequest("Content-Length is not a number")
        media = headers.get("content-type", "").partition(";")[0].strip().lower()
        has_body = length != "0" or "transfer-encoding" in headers
        json_media = media == "application/json" or media.endswith("+json")
        if has_body and not (json_media or any_media):
            return UnsupportedMediaType(
                "send the body as JSON with Content-Type: application/json (got "
                f"{media[:60] or 'none'!r})"
            )
        return BodyTooLarge(self.max_body) if int(length) > self.max_body else None

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        _, sep, netloc = origin.partition("://")
        same = bool(sep) and host is not None and netloc.lower() == host.lower()
        return same or "*" in self.origins or origin in self.origins


def qstash_password(token: str | None) -> str | None:
    """The ``Password`` of a QStash-style token (base64 of ``{"UserID", "Password"}``), if
    ``token`` is one."""
    if not token or len(token) > 4096:
        return None
    try:
        payload = json.loads(base64.b64decode(token + "=" * (-len(token) % 4), validate=True))
    except (ValueError, UnicodeDecodeError):
        return None
    password = payload.get("Password") if isinstance(payload, dict) else None
    return password if isinstance(password, str) else None
