"""The body of the built-in ``upstash`` workflow: QStash's delivery loop, executed by a worker
that holds the run's lease.

Each pass records what the SDK published since the last one (the run's inbox, filled by the
gateway's routes), completes a sleep that is due (or suspends the run until it is), and POSTs the
run's history to the endpoint, signed, the way QStash delivers it (docs/upstash-protocol.md §3).
A failed delivery is a failed attempt of the step it was for: retried with backoff, then the run
fails. The SDK ending the run (``DELETE ...?cancel=false``) ends the loop with its result.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import jwt

from stepstream import events
from stepstream.errors import NonRetryableError, StepFailed
from stepstream.records import StepRecord, StepState, StepType, dumps
from stepstream.upstash.messages import INBOX, RECORDED, RETRIES
from stepstream.workflow.runtime import Suspend

if TYPE_CHECKING:
    from stepstream.workflow.context import WorkflowContext
    from stepstream.workflow.engine import Engine

CURRENT_KEY_ENV = "QSTASH_CURRENT_SIGNING_KEY"
DELIVERY_TIMEOUT = 60.0  # seconds an endpoint may take to answer one delivery
SLEEPS = (StepType.SLEEP, StepType.SLEEP_UNTIL)
UNNAMED = "delivery"  # a failed attempt's name until the SDK names the step (or never does)
MAX_ERRORS = 20
MAX_DETAIL = 8000


@dataclass(frozen=True, slots=True)
class Failure:
    """A delivery that did not succeed: why, the step the SDK says failed, a ``Retry-After``
    (seconds), and whether it must not be retried (489)."""

    message: str
    step: str | None = None
    detail: str = ""
    retry_after: float | None = None
    final: bool = False


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


def raw_step(message_id: str, text: str) -> dict[str, str]:
    return {
        "messageId": message_id,
        "body": base64.b64encode(text.encode()).decode(),
        "callType": "step",
    }


class Delivery:
    """One execution of a gateway run: its steps as recorded, and the passes of the loop."""

    def __init__(self, engine: Engine, context: WorkflowContext) -> None:
        self.engine = engine
        self.context = context
        self.run = context.record
        self.steps = {step.position: step for step in self.run.steps}
        self.url = self.run.headers.get("upstash-workflow-url", "")

    async def loop(self) -> Any:
        """Deliver until the SDK ends the run; its result."""
        if not self.url:
            raise NonRetryableError(
                f"run {self.run.id} was not started through the QStash gateway (/qstash): "
                "it has no endpoint URL to deliver to"
            )
        failure: Failure | None = None
        posted = False
        while True:
            fresh, ended, result = await self.drain()
            if ended:
                return result
            if fresh:
                failure = None  # the endpoint did its part; only its answer was lost
            elif failure is None and posted:
                failure = Failure(
                    "the endpoint answered 2xx but published no step nor ended the run"
                )
            if failure is not None:
                await self.failed(failure)  # raises: retry later, or the run fails
            await self.wake_sleep()
            failure = await self.post()
            posted = True

    # -- recording what the SDK published -----------------------------------------------------

    async def drain(self) -> tuple[bool, bool, Any]:
        """Record the steps published since the last pass (a step already recorded is dropped);
        whether any was new, and whether the SDK ended the run, with its result."""
        kind = INBOX + self.run.id
        backend = self.engine.backend
        inbox = await backend.list_entries(kind)
        fresh, ended, result = False, False, None
        for key in sorted(inbox):
            message = json.loads(inbox[key])
            if message["kind"] == "finish":
                ended = True
                text = message.get("result") or ""
                result = json.loads(text) if text else None
            else:
                fresh = await self.record(message) or fresh
        for key in inbox:  # after recording: a crash before this only redelivers duplicates
            await backend.delete_entry(kind, key)
        return fresh, ended, result

    async def record(self, message: dict[str, Any]) -> bool:
        """Record one published step result, with its events, in one write; ``False`` if its
        position already holds a finished (or sleeping) step."""
        record, at = message["record"], int(message["at"])
        position = int(record["stepId"]) - 1
        existing = self.steps.get(position)
        if existing is not None and existing.state in (StepState.SUCCESS, StepState.PROGRESS):
            return False
        kind = RECORDED[record["stepType"]]
        name = record["stepName"]
        earlier = existing.attempts if existing is not None else 0
        step = StepRecord(
            position,
            name,
            kind,
            StepState.SUCCESS,
            attempts=earlier + 1,
            started_at=at,
            finished_at=at,
            out=record.get("out"),
            errors=existing.errors if existing is not None else None,
        )
        updates = [events.step_start(self.run.id, step)]
        if kind in SLEEPS:
            step.state, step.finished_at, step.out = StepState.PROGRESS, None, None
            step.wake_at = at + int(message.get("delay_ms") or 0)
        else:
            updates.append(events.step_finish(self.run.id, step))
        await self.engine.save_steps(self.context.lease, [step], updates)
        self.steps[position] = step
        return True

    async def wake_sleep(self) -> None:
        """Complete a sleep whose time has come; suspend the run until one that has not."""
        now = self.context.now()
        for step in sorted(self.steps.values(), key=lambda s: s.position):
            if step.type not in SLEEPS or step.state is not StepState.PROGRESS:
                continue
            assert step.wake_at is not None
            if step.wake_at > now:
                self.context.wakes.append(step.wake_at)
                raise Suspend(step.wake_at)
            step.state, step.finished_at = StepState.SUCCESS, now
            await self.engine.save_steps(
                self.context.lease, [step], [events.step_finish(self.run.id, step)]
            )

    # -- delivering -------------------------------------------------------------------------

    def next_position(self) -> int:
        position = 0
        while (step := self.steps.get(position)) is not None and step.state is StepState.SUCCESS:
            position += 1
        return position

    def history(self) -> str:
        """The delivery body: the initial payload, then every finished step as the SDK's
        record, oldest first (docs/upstash-protocol.md §3)."""
        payload = json.loads(self.run.payload)
        initial = "" if payload is None else payload if isinstance(payload, str) else dumps(payload)
        items = [raw_step(f"msg_{self.run.id}_0", initial)]
        for position in range(self.next_position()):
            step = self.steps[position]
            record: dict[str, Any] = {
                "stepId": position + 1,
                "stepName": step.name,
                "stepType": step.type.value,
                "concurrent": 1,
            }
            if step.out is not None:
                record["out"] = step.out
            items.append(raw_step(f"msg_{self.run.id}_{position + 1}", dumps(record)))
        return dumps(items)

    def headers(self, position: int) -> dict[str, str]:
        retried = self.steps.get(position)
        headers = {name: value for name, value in self.run.headers.items() if name != RETRIES}
        headers.update(
            {
                "upstash-workflow-sdk-version": "1",
                "upstash-workflow-runid": self.run.id,
                "upstash-workflow-url": self.url,
                "upstash-workflow-createdat": str(self.run.created_at),
                "upstash-message-id": f"msg_{self.run.id}_{position}",
                "upstash-retried": str(retried.attempts if retried is not None else 0),
            }
        )
        return headers

    async def post(self) -> Failure | None:
        """Deliver the history once; ``None`` if the endpoint took it (2xx)."""
        body = self.history()
        headers = self.headers(self.next_position())
        key = os.environ.get(CURRENT_KEY_ENV)
        if key:
            headers["upstash-signature"] = sign(self.url, body.encode(), key)
        try:
            answer = await self.engine.http_call(self.url, "POST", body, headers, DELIVERY_TIMEOUT)
        except httpx.HTTPError as exc:
            return Failure(f"delivering to {self.url} failed: {type(exc).__name__}: {exc}")
        status = int(answer["status"])
        if 200 <= status < 300:
            return None
        return failure_of(status, answer)

    async def failed(self, failure: Failure) -> None:
        """Record a failed delivery as a failed attempt of the next step; raise ``Suspend``
        (retried after a delay) or ``StepFailed`` (the run fails)."""
        now = self.context.now()
        position = self.next_position()
        existing = self.steps.get(position)
        attempts = (existing.attempts if existing is not None else 0) + 1
        name = failure.step or (existing.name if existing is not None else UNNAMED)
        retries = int(self.run.headers.get(RETRIES, self.definition_retries()))
        retry = not failure.final and attempts <= retries
        errors = [
            *((existing.errors or []) if existing is not None else [])[-(MAX_ERRORS - 1) :],
            {"attempt": attempts, "error": failure.message, "traceback": failure.detail, "at": now},
        ]
        step = StepRecord(
            position,
            name,
            StepType.RUN,
            StepState.RETRY if retry else StepState.FAILED,
            attempts=attempts,
            started_at=now,
            finished_at=now,
            error=failure.message,
            errors=errors,
        )
        if retry:
            delay = failure.retry_after
            if delay is None:
                delay = self.engine.registry.get(self.run.workflow).policy.delay(attempts)
            step.wake_at = now + int(delay * 1000)
        update = events.step_fail(self.run.id, step, will_retry=retry)
        await self.engine.save_steps(self.context.lease, [step], [update])
        self.steps[position] = step
        if step.wake_at is not None:
            self.context.wakes.append(step.wake_at)
            raise Suspend(step.wake_at)
        raise StepFailed(name, failure.message, attempts)

    def definition_retries(self) -> int:
        return self.engine.registry.get(self.run.workflow).retries


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
    if status == 429 and headers.get("retry-after", "").isdigit():
        retry_after = float(headers["retry-after"])
    final = status == 489 and headers.get("upstash-nonretryable-error") == "true"
    step = headers.get("upstash-error-step-name") or None
    return Failure(message, step, detail, retry_after, final)
