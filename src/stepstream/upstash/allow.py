"""Where the gateway may send requests: the endpoints it delivers to and the URLs
``context.call`` asks for (DESIGN §15: outbound deliveries are a security surface).

By default any ``http``/``https`` URL: self-hosted apps live on private addresses and on
localhost, which is why QStash cannot serve them. Whoever holds the API token can therefore
make stepstream send requests inside your network; to restrict that, give the URL prefixes it
may reach (``enable(workflows, allow=[...])`` or ``STEPSTREAM_UPSTASH_ALLOW``, comma separated).
A refused destination is an error where it is asked for: at trigger time for an endpoint, when
the step is published for a ``context.call``; the worker checks again before each request.

>>> policy = Allow(("http://app.internal:3000/api/",))
>>> policy.check("http://app.internal:3000/api/workflow", "the workflow endpoint")
>>> policy.check("http://169.254.169.254/latest", "context.call")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
stepstream.errors.ValidationError: context.call: http://169.254.169.254/latest is not allowed...
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from stepstream.errors import ConfigurationError, ValidationError
from stepstream.workflow.engine import Engine

ALLOW_ENV = "STEPSTREAM_UPSTASH_ALLOW"


@dataclass(frozen=True, slots=True)
class Allow:
    """The URL prefixes the gateway may send requests to (empty: any http(s) URL)."""

    prefixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, allow: list[str] | tuple[str, ...] | None) -> Allow:
        """``allow``, else ``$STEPSTREAM_UPSTASH_ALLOW``, else any URL; each prefix must be an
        absolute http(s) URL (``ConfigurationError`` naming the one that is not)."""
        if allow is None:
            text = os.environ.get(ALLOW_ENV, "")
            allow = [part.strip() for part in text.split(",") if part.strip()]
        for prefix in allow:
            parts = urlsplit(prefix)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigurationError(
                    f"allowed destination {prefix!r} must be an absolute http(s) URL prefix, "
                    "such as http://app.internal:3000/api/"
                )
        return cls(tuple(_normal(prefix) for prefix in allow))

    def check(self, url: str, what: str) -> None:
        """``ValidationError`` unless ``url`` is an http(s) URL this policy allows, and one a
        request can be sent to (``urlsplit`` and httpx both read it)."""
        try:
            parts = urlsplit(url)
            httpx.URL(url)
        except (ValueError, httpx.InvalidURL) as exc:
            raise ValidationError(f"{what}: {url!r:.200} is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValidationError(f"{what}: {url!r:.200} is not an absolute http(s) URL")
        if self.prefixes and not _normal(url).startswith(self.prefixes):
            raise ValidationError(
                f"{what}: {url:.200} is not allowed: this stepstream sends requests only to "
                f"URLs starting with {', '.join(self.prefixes)} (enable(workflows, allow=[...]) "
                f"or {ALLOW_ENV} on the server and the workers)"
            )


def _normal(url: str) -> str:
    """``url`` with its scheme and host in lower case (they are case-insensitive) and a path of
    at least ``/``, so the prefix ``http://app:3000`` never admits ``http://app:30001/`` nor
    ``http://app:3000@elsewhere/``."""
    parts = urlsplit(url)
    return parts._replace(
        scheme=parts.scheme.lower(), netloc=parts.netloc.lower(), path=parts.path or "/"
    ).geturl()


POLICIES: weakref.WeakKeyDictionary[Engine, Allow] = weakref.WeakKeyDictionary()


def policy_of(engine: Engine) -> Allow:
    """The destinations ``enable`` allowed for ``engine`` (``$STEPSTREAM_UPSTASH_ALLOW`` or any
    URL if it was not given them)."""
    found = POLICIES.get(engine)
    if found is None:
        found = POLICIES[engine] = Allow.of(None)
    return found
