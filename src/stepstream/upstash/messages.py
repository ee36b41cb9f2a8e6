"""What the Upstash Workflow SDK publishes to QStash, parsed into what the gateway acts on: the
Init message that starts a run, and a step's result (docs/upstash-protocol.md §2, §4).

Pure functions of the message (its destination, lower-cased headers and body text): nothing here
touches storage.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from stepstream.errors import BadRequest, ConfigurationError
from stepstream.records import StepType
from stepstream.upstash.delay import parse_delay
from stepstream.upstash.names import endpoint_label
from stepstream.upstash.text import (
    MAX_HEADER_COUNT,
    TOKEN,
    count_of,
    deliverable,
    duration_ms,
    loads,
)
from stepstream.workflow.engine import MAX_LABELS
from stepstream.workflow.flow import FlowControl

INBOX = "upstash-inbox:"  # entry kind (+ run id) of the messages a run's worker has to record
PLANS = "upstash-plans:"  # entry kind (+ run id): a run's parallel plan steps, by target
FAILURES = "upstash-failures"  # entry kind: what a failed run's failure callback answered
FORWARD = "upstash-forward-"
# Headers of the triggering request the SDK forwards but a delivery must not repeat: hop-by-hop
# ones, and the signature of another body.
NOT_DELIVERED = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "accept-encoding",
        "upstash-signature",
    }
)
RETRIES = "upstash-retries"  # kept in the run's headers, not delivered
RETRY_DELAY = "upstash-retry-delay"  # kept too: the retry delay expression (``delay.py``)
FAILURE_URL = "upstash-failure-callback"  # kept too: where the failure callback goes
FAILURE_FORWARD = FAILURE_URL + "-forward-"  # ... with these headers
FEATURES = "upstash-feature-set"  # kept too: what the SDK can take (``lazy.py``)
KEPT_APART = (
    RETRIES,
    RETRY_DELAY,
    FAILURE_URL,
    FEATURES,
)  # run headers (prefixes) a step delivery does not send
# The step kinds this gateway records from a published result (the SDK's names are
# ``StepType``'s values). Calls, waits, invokes and parallel plans arrive otherwise.
RECORDED = {kind.value: kind for kind in (StepType.RUN, StepType.SLEEP, StepType.SLEEP_UNTIL)}
RECORDED["Notify"] = StepType.NOTIFY
RECORDED["CreateWebhook"] = StepType.RUN  # its result is the hook's URL (``plans.py``)
WAITS = ("Wait", "WaitForWebhook")  # the SDK's waits; both are stepstream Wait steps
MAX_PARALLEL = 100
LATEST_NOT_BEFORE = 253_402_300_799.0  # 9999-12-31T23:59:59Z, unix seconds
# The largest SDK step id: inbox keys hold 9 digits, PostgreSQL positions are 32-bit.
MAX_STEP_ID = 999_999_999
# What a parallel group may hold (its plans' step types): the recorded kinds, and those whose
# plan's delivery makes the SDK publish a call, a wait or an invoke.
PLANNED = (*RECORDED, "Call", *WAITS, "Invoke")


@dataclass(frozen=True, slots=True)
class Init:
    """Start run ``run_id`` of the endpoint ``url``: ``payload`` (parsed JSON, else the text),
    the ``headers`` every delivery carries, ``labels``, a ``delay`` in seconds, and the
    ``flow`` control of its deliveries (``FlowControl``'s arguments)."""

    run_id: str
    url: str
    payload: Any
    headers: dict[str, str]
    labels: list[str]
    delay: float | None
    flow: dict[str, Any] | None = None

    def flow_control(self) -> FlowControl | None:
        return None if self.flow is None else FlowControl(**self.flow)


@dataclass(frozen=True, slots=True)
class Call:
    """``context.call``: the step at ``position`` makes this HTTP request (docs §6)."""

    run_id: str
    position: int
    name: str
    url: str
    method: str
    headers: dict[str, str]
    body: str
    retries: int
    timeout_ms: int | None


@dataclass(frozen=True, slots=True)
class Wait:
    """``context.waitForEvent`` (or ``waitForWebhook``, the SDK's ``kind``): the step at
    ``position`` waits for ``event_id`` (docs §7)."""

    run_id: str
    position: int
    name: str
    event_id: str
    timeout_ms: int
    kind: str = "Wait"


@dataclass(frozen=True, slots=True)
class StepResult:
    """The SDK's record of step ``record["stepId"]`` of ``run_id``; a sleep's ``delay_ms``."""

    run_id: str
    record: dict[str, Any]
    delay_ms: int | None

    @property
    def position(self) -> int:
        """The stepstream position of the step (the SDK counts from 1); a plan's target."""
        return int(self.record["stepId"] or self.record["targetStep"]) - 1

    @property
    def plan(self) -> bool:
        """A parallel group's plan step (``stepId`` 0), not a result."""
        return bool(self.record["stepId"] == 0)


@dataclass(frozen=True, slots=True)
class Invoke:
    """``context.invoke``: the parent's step at ``position`` starts ``child`` (its Init) and
    waits for it to end (docs §10)."""

    run_id: str
    position: int
    name: str
    child: Init


@dataclass(frozen=True, slots=True)
class Plain:
    """A plain QStash message (no workflow headers): one delivery of ``body`` to ``url``
    with ``headers`` (its ``Upstash-Forward-*`` ones and content type), retried ``retries``
    times, after ``delay`` seconds."""

    url: str
    method: str
    headers: dict[str, str]
    body: str
    retries: int
    delay: float | None


Message = Init | StepResult | Call | Invoke | Plain


def parse(destination: str, headers: dict[str, str], body: str, now: int) -> Message:
    """The message published to ``destination``; ``BadRequest`` naming what this gateway does
    not serve (yet)."""
    run_id = headers.get("upstash-workflow-runid")
    if not run_id:
        return _plain(destination, headers, body, now)
    if "upstash-callback" in headers or headers.get("upstash-workflow-calltype") == "toCallback":
        return _call(run_id, destination, headers, body)
    delay_ms = _delay_ms(headers, now)
    if headers.get("upstash-workflow-init") == "true":
        url = headers.get("upstash-workflow-url") or destination
        delay = None if delay_ms is None else delay_ms / 1000
        if headers.get("upstash-workflow-invoke") == "true":
            return _invoke(run_id, url, headers, body, delay)
        return Init(
            run_id,
            url,
            _payload(body),
            _run_headers(url, headers),
            _labels(headers, url),
            delay,
            flow_of(headers),
        )
    return StepResult(run_id, _record(body), delay_ms)


def _plain(url: str, headers: dict[str, str], body: str, now: int) -> Plain:
    """A message without workflow headers: delivered once to ``url``, as QStash does (an
    endpoint wrapped by the SDK's ``serve`` takes it as a first invocation)."""
    if not url.startswith(("http://", "https://")):
        raise BadRequest(
            f"a plain message needs an http(s) URL as its destination, not {url[:80]!r}: "
            "topics, URL groups and queues are not served by the stepstream QStash gateway"
        )
    unserved = [n for n in ("upstash-callback", FAILURE_URL) if n in headers]
    if unserved:
        raise BadRequest(
            f"{unserved[0]} on a plain message is not served by the stepstream QStash gateway"
        )
    forwarded = _forwarded(headers, NOT_DELIVERED)
    if "content-type" in headers:
        forwarded["content-type"] = headers["content-type"]
    delay_ms = _delay_ms(headers, now)
    return Plain(
        url,
        _method(headers),
        forwarded,
        body,
        _count(headers, RETRIES, 3),
        None if delay_ms is None else delay_ms / 1000,
    )


def _invoke(
    child_id: str, url: str, headers: dict[str, str], body: str, delay: float | None
) -> Invoke:
    """An invoke message: the child's Init, wrapped in the invoking step (docs §10)."""
    try:
        wrapper = loads(body)
        step, parent = wrapper["step"], str(wrapper["workflowRunId"])
        position, name = int(step["stepId"]) - 1, str(step["stepName"])
        payload = wrapper.get("body")
    except (ValueError, TypeError, KeyError, OverflowError):
        raise BadRequest("an invoke message needs the SDK's JSON body with its step") from None
    if not 0 <= position < MAX_STEP_ID or not name or not parent:
        raise BadRequest(
            f"an invoke message needs the invoking run's id and step (1 to {MAX_STEP_ID})"
        )
    if not isinstance(payload, str | None):
        raise BadRequest("an invoke message's body must be the child's payload as a string")
    _concurrent(step.get("concurrent", 1), "an invoke")
    child = Init(
        child_id,
        url,
        _payload(payload or ""),
        _run_headers(url, headers),
        _labels(headers, url),
        delay,
        flow_of(headers),
    )
    return Invoke(parent, position, name, child)


def _payload(body: str) -> Any:
    """The initial payload as the SDK reads it back: JSON if it parses, else the text."""
    if body == "":
        return None
    try:
        return loads(body)
    except ValueError:
        return body


def _run_headers(url: str, headers: dict[str, str]) -> dict[str, str]:
    """What every delivery of the run sends: the forwarded headers of the Init message, its
    content type and URL, its labels (``context.labels``); and its retries, kept apart."""
    kept = {
        "content-type": headers.get("content-type", "application/json"),
        "upstash-workflow-url": url,
    }
    kept.update(_forwarded(headers, NOT_DELIVERED))
    if "upstash-label" in headers:
        kept["upstash-label"] = headers["upstash-label"]
    if FEATURES in headers:
        kept[FEATURES] = headers[FEATURES][:200]
    if RETRIES in headers:
        kept[RETRIES] = str(_count(headers, RETRIES, 3))
    if headers.get(RETRY_DELAY, "").strip():
        parse_delay(headers[RETRY_DELAY])  # refused at the trigger, not at the first retry
        kept[RETRY_DELAY] = headers[RETRY_DELAY].strip()
    for name, value in headers.items():
        if name.startswith(FAILURE_FORWARD):
            kept[name] = deliverable(name[len(FAILURE_FORWARD) :], value)
        elif name == FAILURE_URL:
            kept[name] = value
    return kept


def flow_of(headers: dict[str, str]) -> dict[str, Any] | None:
    """``Upstash-Flow-Control-Key`` / ``-Value`` (``"parallelism=2, rate=10, period=60s"``)
    as ``FlowControl``'s arguments; ``BadRequest`` naming what is wrong."""
    key = headers.get("upstash-flow-control-key", "").strip()
    value = headers.get("upstash-flow-control-value", "").strip()
    if not key:
        if value:
            raise BadRequest("Upstash-Flow-Control-Value needs Upstash-Flow-Control-Key")
        return None
    flow: dict[str, Any] = {"key": key}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, _, number = part.partition("=")
        name, number = name.strip().lower(), number.strip()
        count = count_of(number) if name in ("parallelism", "rate") else None
        if count is not None:
            flow[name] = count
        elif name == "period" and number:
            flow[name] = duration_ms(number, "the flow control period") / 1000
        else:
            raise BadRequest(
                f"Upstash-Flow-Control-Value part {part[:40]!r}: use parallelism=<n>, "
                f"rate=<n> (n a count up to {MAX_HEADER_COUNT}) and period=<duration>"
            )
    try:
        FlowControl(**flow)
    except ConfigurationError as exc:
        raise BadRequest(f"Upstash-Flow-Control-Value: {exc}") from None
    return flow


def _count(headers: dict[str, str], name: str, default: int) -> int:
    text = headers.get(name, str(default)).strip()
    found = count_of(text)
    if found is None:
        raise BadRequest(f"{name} {text[:20]!r} is not a count (0 to {MAX_HEADER_COUNT})")
    return found


def _forwarded(headers: dict[str, str], skipped: Collection[str] = ()) -> dict[str, str]:
    """The ``Upstash-Forward-*`` headers, by the name they are delivered under (but those
    ``skipped``); ``BadRequest`` for one a request can not carry (``text.deliverable``)."""
    return {
        name[len(FORWARD) :]: deliverable(name[len(FORWARD) :], value)
        for name, value in headers.items()
        if name.startswith(FORWARD) and name[len(FORWARD) :] not in skipped
    }


def _method(headers: dict[str, str]) -> str:
    """``Upstash-Method`` (default ``POST``), if a request can be sent with it."""
    method = headers.get("upstash-method", "POST").strip().upper()
    if not TOKEN.fullmatch(method) or not method.isascii():
        raise BadRequest(f"Upstash-Method {method[:20]!r} is not an HTTP method such as POST")
    return method


def _call(run_id: str, url: str, headers: dict[str, str], body: str) -> Call:
    """The request of a ``context.call`` message; its step from the callback's headers."""
    step = "upstash-callback-forward-upstash-workflow-"
    step_id = count_of(headers.get(step + "stepid", ""))
    name = headers.get(step + "stepname", "")
    if step_id is None or not 1 <= step_id <= MAX_STEP_ID or not name:
        raise BadRequest(
            f"a context.call message needs its step's id (1 to {MAX_STEP_ID}) and name"
        )
    concurrent = headers.get(step + "concurrent", "1")
    count = count_of(concurrent)
    _concurrent(concurrent if count is None else count, "a context.call")
    if not url.startswith(("http://", "https://")):
        raise BadRequest(f"context.call needs an http(s) URL, not {url[:80]!r}")
    timeout = headers.get("upstash-timeout")
    return Call(
        run_id,
        step_id - 1,
        name,
        url,
        _method(headers),
        _forwarded(headers),
        body,
        _count(headers, RETRIES, 0),
        None if not timeout else duration_ms(timeout, "Upstash-Timeout"),
    )


def parse_wait(event_id: str, headers: dict[str, str], body: str) -> Wait:
    """``POST /v2/wait/{eventId}``: the waiting step, from the body's ``step``."""
    run_id = headers.get("upstash-workflow-runid")
    try:
        request = loads(body)
        step = request["step"]
        position, name = int(step["stepId"]) - 1, str(step["stepName"])
    except (ValueError, TypeError, KeyError, OverflowError):
        raise BadRequest("a wait needs the SDK's JSON body with its step") from None
    if not run_id or not 0 <= position < MAX_STEP_ID or not name or not event_id:
        raise BadRequest(
            f"a wait needs Upstash-Workflow-RunId, an event id and a step (1 to {MAX_STEP_ID})"
        )
    _concurrent(step.get("concurrent", 1), "a wait")
    kind = step.get("stepType")
    if kind not in WAITS:
        raise BadRequest(
            f"a {str(kind)[:40]} wait is not served by the stepstream QStash gateway (it "
            f"serves {' and '.join(WAITS)})"
        )
    timeout = request.get("timeout") or "7d"
    return Wait(run_id, position, name, event_id, duration_ms(str(timeout), "timeout"), kind)


def _concurrent(value: Any, what: str) -> None:
    """``BadRequest`` unless ``value`` is a step's ``concurrent``: 1, or a parallel group's
    size."""
    if type(value) is not int or not 1 <= value <= MAX_PARALLEL:
        raise BadRequest(f"{what}'s concurrent must be 1 to {MAX_PARALLEL}, not {value!r:.20}")


def _labels(headers: dict[str, str], url: str) -> list[str]:
    """The run's labels: its endpoint's (``names.py``), then those of ``Upstash-Label``."""
    labels = headers.get("upstash-label", "").split(",")
    given = list(dict.fromkeys(label for label in labels if label))
    if len(given) >= MAX_LABELS:
        raise BadRequest(
            f"Upstash-Label has {len(given)} labels: give at most {MAX_LABELS - 1} (stepstream "
            "labels each run with its endpoint's path too, to find runs by endpoint)"
        )
    return [endpoint_label(url), *given]


def _record(body: str) -> dict[str, Any]:
    try:
        record = loads(body)
    except ValueError:
        raise BadRequest("a step message's body must be the SDK's JSON step record") from None
    if not isinstance(record, dict):
        raise BadRequest("a step message's body must be a JSON object (the SDK's step record)")
    step_id, name = record.get("stepId"), record.get("stepName")
    concurrent, target = record.get("concurrent", 1), record.get("targetStep")
    if step_id == 0 or concurrent != 1:
        _check_parallel(record, step_id, concurrent, target)
    elif type(step_id) is not int or not 1 <= step_id <= MAX_STEP_ID or not name:
        raise BadRequest(f"a step record needs an integer stepId 1 to {MAX_STEP_ID} and a stepName")
    if not isinstance(name, str):
        raise BadRequest("a step record's stepName must be a string")
    if step_id != 0 and record.get("stepType") not in RECORDED:
        raise BadRequest(
            f"step type {str(record.get('stepType'))[:40]!r} is not served by the stepstream "
            f"QStash gateway yet (it records {', '.join(RECORDED)})"
        )
    out = record.get("out")
    if out is not None:
        try:
            loads(out)
        except (TypeError, ValueError):
            raise BadRequest("a step record's out must be JSON text") from None
    return record


def _check_parallel(record: dict[str, Any], step_id: Any, concurrent: Any, target: Any) -> None:
    """A plan (``stepId`` 0, ``targetStep``) or a result of a parallel group."""
    if type(concurrent) is not int or not 1 < concurrent <= MAX_PARALLEL:
        raise BadRequest(f"a parallel step's concurrent must be 2 to {MAX_PARALLEL}")
    position = target if step_id == 0 else step_id
    if type(position) is not int or not 1 <= position <= MAX_STEP_ID or not record.get("stepName"):
        raise BadRequest(
            f"a parallel step needs a targetStep (plan) or stepId 1 to {MAX_STEP_ID}, and a name"
        )
    if step_id == 0 and record.get("stepType") not in PLANNED:
        raise BadRequest(
            f"parallel {str(record.get('stepType'))[:40]} steps are not served by the "
            f"stepstream QStash gateway yet (it serves {', '.join(PLANNED)})"
        )


def _delay_ms(headers: dict[str, str], now: int) -> int | None:
    """How long the message waits: ``Upstash-Delay`` (``"2s"``, ``"1h30m"``) or until
    ``Upstash-Not-Before`` (unix seconds)."""
    if "upstash-not-before" in headers:
        try:
            seconds = float(headers["upstash-not-before"])
        except ValueError:
            seconds = math.nan
        if not 0 <= seconds <= LATEST_NOT_BEFORE:  # nan, inf and what no clock reaches too
            raise BadRequest(
                f"Upstash-Not-Before must be unix seconds from 0 to {LATEST_NOT_BEFORE:.0f}"
            )
        return max(0, int(seconds * 1000) - now)
    text = headers.get("upstash-delay", "").strip()
    return duration_ms(text, "Upstash-Delay") if text else None
