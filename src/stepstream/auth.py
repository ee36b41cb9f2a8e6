"""Access control: the API bearer token, and short-lived signed subscription tokens.

Browsers cannot put headers on an ``EventSource``, so a page gets a token scoped to the
channels it may read (minted by your server with ``realtime.token(channels, ttl)``, or by
``POST /api/realtime/token`` with the API token) and passes it as ``?token=``. A token is
``<payload>.<signature>``: base64url JSON ``{"c": channels, "e": expiry}`` signed with
HMAC-SHA256 under the realtime's secret (``STEPSTREAM_SECRET``; every server of a deployment
needs the same one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Collection, Sequence

from stepstream.clock import system_ms
from stepstream.errors import Forbidden, InvalidToken, Unauthorized

SECRET_ENV = "STEPSTREAM_SECRET"
TOKEN_ENV = "STEPSTREAM_TOKEN"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Mints and checks subscription tokens.

    >>> signer = TokenSigner(b"k" * 32)
    >>> token = signer.mint(["run-1"], ttl=60)
    >>> sorted(signer.verify(token))
    ['run-1']
    """

    def __init__(self, secret: bytes | str | None = None) -> None:
        if secret is None:
            secret = os.environ.get(SECRET_ENV) or secrets.token_bytes(32)
        self._key = secret.encode() if isinstance(secret, str) else secret

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def mint(self, channels: Sequence[str], ttl: float = 3600) -> str:
        if isinstance(channels, str):
            channels = [channels]
        if not channels or ttl <= 0:
            raise ValueError("a token needs at least one channel and a positive ttl")
        body = {"c": list(channels), "e": int(system_ms() / 1000 + ttl)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> frozenset[str]:
        """The channels ``token`` grants; ``InvalidToken`` (saying why) otherwise."""
        payload, _, signature = token.partition(".")
        if not payload or not signature:
            raise InvalidToken("malformed token: expected <payload>.<signature>")
        # Bytes, not str: compare_digest refuses non-ASCII text (a TypeError, i.e. a 500).
        if not hmac.compare_digest(_utf8(signature), _utf8(self._sign(payload))):
            raise InvalidToken("token signature does not match (tampered, or another secret)")
        try:
            body = json.loads(_unb64(payload))
            channels, expiry = body["c"], body["e"]
        # base64 (binascii.Error, or ValueError for non-ASCII text) and JSON both raise ValueErrors
        except (ValueError, KeyError, TypeError):
            raise InvalidToken("malformed token payload") from None
        if system_ms() / 1000 > expiry:
            raise InvalidToken("token expired: ask the server for a new one")
        return frozenset(str(c) for c in channels)


def bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def same_token(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(_utf8(given), _utf8(expected))


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (from a decoded query string) is data, never an error.
    return text.encode("utf-8", "surrogatepass")


def channel_refusal(
    channels: Collection[str],
    *,
    signer: TokenSigner,
    api_token: str | None,
    query_token: str | None,
    bearer_token: str | None,
) -> Unauthorized | Forbidden | None:
    """The access rule for reading ``channels`` (the SSE and history endpoints): ``None`` if
    the request may, else the error refusing it.

    The API token counts only as a bearer header: a query string lands in access logs. A
    subscription token (``realtime.token(...)``) may be either, and must grant every channel.

    >>> signer = TokenSigner(b"k" * 32)
    >>> token = signer.mint(["a"], ttl=60)
    >>> channel_refusal(["b"], signer=signer, api_token=None, query_token=token, bearer_token=None)
    Forbidden('the token does not grant channel(s) b')
    """
    if api_token is not None and same_token(bearer_token, api_token):
        return None
    if api_token is not None and same_token(query_token, api_token):
        return Unauthorized(
            "send the API token as Authorization: Bearer, never in a URL (logs keep URLs)"
        )
    given = query_token or bearer_token
    if not given:
        return Unauthorized("this endpoint needs a subscription token: add ?token=...")
    try:
        granted = signer.verify(given)
    except InvalidToken as exc:
        return exc
    refused = [channel for channel in channels if channel not in granted]
    if refused:
        return Forbidden(f"the token does not grant channel(s) {', '.join(refused)}")
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, an IPv6 one with or without brackets, no port)
    names this machine only: ``localhost``, ``127.0.0.0/8``, ``::1``."""
    name = host.lower().removeprefix("[").removesuffix("]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
