"""What the Upstash Workflow SDK publishes to QStash, parsed into what the gateway acts on: the
Init message that starts a run, and a step's result (docs/upstash-protocol.md §2, §4).

Pure functions of the message (its destination, lower-cased headers and body text): nothing here
touches storage.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from stepstream.errors import BadRequest
from stepstream.records import StepType

WORKFLOW = "upstash"  # the built-in workflow every gateway run is a run of
INBOX = "upstash-inbox:"  # entry kind (+ run id) of the messages a run's worker has to record
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
# The step kinds this gateway records from a published result (the SDK's names are
# ``StepType``'s values). Calls, waits, invokes and parallel plans arrive otherwise.
RECORDED = {kind.value: kind for kind in (StepType.RUN, StepType.SLEEP, StepType.SLEEP_UNTIL)}
RECORDED["Notify"] = StepType.NOTIFY
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@dataclass(frozen=True, slots=True)
class Init:
    """Start run ``run_id`` of the endpoint ``url``: ``payload`` (parsed JSON, else the text),
    the ``headers`` every delivery carries, ``labels``, and a ``delay`` in seconds."""

    run_id: str
    url: str
    payload: Any
    headers: dict[str, str]
    labels: list[str]
    delay: float | None


@dataclass(frozen=True, slots=True)
class StepResult:
    """The SDK's record of step ``record["stepId"]`` of ``run_id``; a sleep's ``delay_ms``."""

    run_id: str
    record: dict[str, Any]
    delay_ms: int | None

    @property
    def position(self) -> int:
        """The stepstream position of the step (the SDK counts from 1)."""
        return int(self.record["stepId"]) - 1


def parse(destination: str, headers: dict[str, str], body: str, now: int) -> Init | StepResult:
    """The message published to ``destination``; ``BadRequest`` naming what this gateway does
    not serve (yet)."""
    run_id = headers.get("upstash-workflow-runid")
    if not run_id:
        raise BadRequest(
            "only Upstash Workflow messages are served under /qstash (this one has no "
            "Upstash-Workflow-RunId): plain QStash messages, queues and schedules are not"
        )
    if "upstash-callback" in headers or headers.get("upstash-workflow-calltype") == "toCallback":
        raise BadRequest("context.call is not served by the stepstream QStash gateway yet")
    if headers.get("upstash-workflow-invoke") == "true":
        raise BadRequest("context.invoke is not served by the stepstream QStash gateway yet")
    delay_ms = _delay_ms(headers, now)
    if headers.get("upstash-workflow-init") == "true":
        url = headers.get("upstash-workflow-url") or destination
        delay = None if delay_ms is None else delay_ms / 1000
        return Init(
            run_id, url, _payload(body), _run_headers(url, headers), _labels(headers), delay
        )
    return StepResult(run_id, _record(body), delay_ms)


def _payload(body: str) -> Any:
    """The initial payload as the SDK reads it back: JSON if it parses, else the text."""
    if body == "":
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body


def _run_headers(url: str, headers: dict[str, str]) -> dict[str, str]:
    """What every delivery of the run sends: the forwarded headers of the Init message, its
    content type and URL, its labels (``context.labels``); and its retries, kept apart."""
    kept = {
        "content-type": headers.get("content-type", "application/json"),
        "upstash-workflow-url": url,
    }
    for name, value in headers.items():
        if name.startswith(FORWARD) and name[len(FORWARD) :] not in NOT_DELIVERED:
            kept[name[len(FORWARD) :]] = value
    if "upstash-label" in headers:
        kept["upstash-label"] = headers["upstash-label"]
    if RETRIES in headers:
        if not headers[RETRIES].isdigit():
            raise BadRequest(f"Upstash-Retries {headers[RETRIES][:20]!r} is not a count")
        kept[RETRIES] = headers[RETRIES]
    return kept


def _labels(headers: dict[str, str]) -> list[str]:
    return [label for label in headers.get("upstash-label", "").split(",") if label]


def _record(body: str) -> dict[str, Any]:
    try:
        record = json.loads(body)
    except ValueError:
        raise BadRequest("a step message's body must be the SDK's JSON step record") from None
    if not isinstance(record, dict):
        raise BadRequest("a step message's body must be a JSON object (the SDK's step record)")
    step_id, name = record.get("stepId"), record.get("stepName")
    if step_id == 0:
        raise BadRequest("parallel steps are not served by the stepstream QStash gateway yet")
    if type(step_id) is not int or step_id < 1 or not isinstance(name, str) or not name:
        raise BadRequest("a step record needs an integer stepId >= 1 and a stepName")
    if record.get("stepType") not in RECORDED:
        raise BadRequest(
            f"step type {str(record.get('stepType'))[:40]!r} is not served by the stepstream "
            f"QStash gateway yet (it records {', '.join(RECORDED)})"
        )
    if record.get("concurrent", 1) != 1:
        raise BadRequest("parallel steps are not served by the stepstream QStash gateway yet")
    out = record.get("out")
    if out is not None:
        try:
            json.loads(out)
        except (TypeError, ValueError):
            raise BadRequest("a step record's out must be JSON text") from None
    return record


def _delay_ms(headers: dict[str, str], now: int) -> int | None:
    """How long the message waits: ``Upstash-Delay`` (``"2s"``, ``"1h30m"``) or until
    ``Upstash-Not-Before`` (unix seconds)."""
    if "upstash-not-before" in headers:
        try:
            return max(0, int(float(headers["upstash-not-before"]) * 1000) - now)
        except ValueError:
            raise BadRequest("Upstash-Not-Before must be unix seconds") from None
    text = headers.get("upstash-delay", "").strip()
    if not text:
        return None
    if text.isdigit():
        return int(text) * 1000
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise BadRequest(f"Upstash-Delay {text[:40]!r} is not a duration such as 10s or 1h30m")
    return int(sum(float(number) * UNIT_MS[unit] for number, unit in parts))
