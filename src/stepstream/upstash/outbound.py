"""The requests stepstream makes as QStash: signed, to the endpoint or to ``context.call``'s URL
(docs/upstash-protocol.md §6, §8, §11). No storage here: the delivery loop records outcomes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from stepstream.records import dumps

CURRENT_KEY_ENV = "QSTASH_CURRENT_SIGNING_KEY"
CALL_TIMEOUT = 60.0  # seconds a context.call may take without its own Upstash-Timeout
MAX_CALL_BODY = 1_000_000  # bytes of a called URL's answer kept as the step's result
CALL_RETRY_DELAY = 1.0  # seconds between a context.call's attempts (doubling, at most 8)
FAILURE_ATTEMPTS = 3
MAX_DETAIL = 8000  # characters of a failing answer's stack kept
MAX_RETRY_AFTER = 86_400  # seconds: a longer Retry-After is a day (QStash's backoff cap too)


@dataclass(frozen=True, slots=True)
class Failure:
    """A delivery that did not succeed: why, the step the SDK says failed, a ``Retry-After``
    (seconds), whether it must not be retried (489), and the answer (for the failure
    callback). ``position``: the step it was an attempt of, when known (a call, a parallel
    plan's delivery); else the next step."""

    message: str
    step: str | None = None
    detail: str = ""
    retry_after: float | None = None
    final: bool = False
    status: int = 500
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    position: int | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, list[str]]
    text: str


def sign(url: str, body: bytes, key: str) -> str:
    """``Upstash-Signature``: an HS256 JWT issued by ``Upstash`` over the destination URL and
    the body's SHA-256, as the SDK's ``Receiver`` verifies it (docs/upstash-protocol.md §11)."""
    now = int(time.time())
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
    claims = {
        "iss": "Upstash",
        "sub": url,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "jwt_" + secrets.token_hex(8),
        "body": digest,
    }
    return jwt.encode(claims, key, algorithm="HS256")


def signed(url: str, body: str, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus the signature of ``body``, when stepstream has a signing key."""
    key = os.environ.get(CURRENT_KEY_ENV)
    return {**headers, "upstash-signature": sign(url, body.encode(), key)} if key else headers


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def send(method: str, url: str, headers: dict[str, str], body: str, seconds: float) -> Answer:
    """One request; ``httpx.HTTPError`` if it got no answer."""
    async with httpx.AsyncClient(timeout=seconds) as client:
        content = body.encode() if body and method not in ("GET", "HEAD") else None
        response = await client.request(method, url, headers=headers, content=content)
    grouped: dict[str, list[str]] = {}
    for name, value in response.headers.multi_items():
        grouped.setdefault(name, []).append(value)
    return Answer(response.status_code, grouped, response.text[:MAX_CALL_BODY])


async def make_call(call: dict[str, Any]) -> str | Failure:
    """``context.call``'s request, with its retries (non-2xx answers and network errors), as
    QStash makes it; the step's ``out`` as the SDK reads it (``{status, body, header}``), the
    last answer even if not 2xx. A ``Failure`` if no attempt got an answer."""
    timeout = call["timeout_ms"] / 1000 if call.get("timeout_ms") else CALL_TIMEOUT
    answer: Answer | None = None
    error = ""
    for attempt in range(int(call["retries"]) + 1):
        if attempt:
            await asyncio.sleep(min(8.0, CALL_RETRY_DELAY * 2 ** (attempt - 1)))
        try:
            answer = await send(call["method"], call["url"], call["headers"], call["body"], timeout)
        except httpx.HTTPError as exc:
            error = f"context.call {call['name']!r} to {call['url']} failed: {exc!r}"
            continue
        if 200 <= answer.status < 300:
            break
    if answer is None:
        return Failure(error, step=call["name"])
    return dumps({"status": answer.status, "body": answer.text, "header": answer.headers})


def failure_payload(
    run: Any, url: str, failure: Failure, message_id: str, initial: str
) -> dict[str, Any]:
    """The failure callback's body (docs §8): the failing answer, and the run's origin."""
    text = failure.body or dumps({"error": "WorkflowError", "message": failure.message})
    header = {name: [value] for name, value in failure.headers.items()}
    return {
        "status": failure.status,
        "header": header,
        "body": b64(text),
        "url": url,
        "sourceHeader": {name: [value] for name, value in run.headers.items()},
        "sourceBody": b64(initial),
        "workflowRunId": run.id,
        "workflowCreatedAt": run.created_at,
        "sourceMessageId": message_id,
    }


async def call_failure_url(
    target: str, headers: dict[str, str], payload: dict[str, Any]
) -> dict[str, Any]:
    """POST the failure callback (a few attempts); what the logs show of it."""
    body = dumps(payload)
    outcome: dict[str, Any] = {"url": target, "state": "CALLBACK_FAIL"}
    for attempt in range(FAILURE_ATTEMPTS):
        if attempt:
            await asyncio.sleep(attempt)
        try:
            answer = await send("POST", target, signed(target, body, headers), body, CALL_TIMEOUT)
        except httpx.HTTPError as exc:
            outcome["errors"] = [f"{type(exc).__name__}: {exc}"]
            continue
        outcome.update(responseStatus=answer.status, responseBody=answer.text[:8000])
        if 200 <= answer.status < 300:
            outcome["state"] = "CALLBACK_SUCCESS"
            break
    return outcome


def failure_of(status: int, answer: dict[str, Any]) -> Failure:
    """What a non-2xx answer of the SDK means (docs/upstash-protocol.md §3, responses)."""
    headers = {name.lower(): value for name, value in answer["headers"].items()}
    body = answer["body"]
    message, detail = f"the endpoint answered {status}", ""
    if isinstance(body, dict):
        if body.get("message"):
            message = f"{message}: {body.get('error') or 'Error'}: {body['message']}"
        detail = str(body.get("stack") or "")[:MAX_DETAIL]
    elif body:
        message = f"{message}: {str(body)[:200]}"
    retry_after = None
    seconds = headers.get("retry-after", "").strip()
    if status == 429 and seconds.isascii() and seconds.isdigit():  # "²".isdigit() too
        retry_after = float(min(int(seconds[:12]), MAX_RETRY_AFTER))
    final = status == 489 and headers.get("upstash-nonretryable-error") == "true"
    step = headers.get("upstash-error-step-name") or None
    text = body if isinstance(body, str) else dumps(body)
    return Failure(message, step, detail, retry_after, final, status, text, headers)
