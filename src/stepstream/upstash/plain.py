"""Plain QStash messages: ``POST /v2/publish/{url}`` without workflow headers is one signed
delivery of the body to ``url``, retried on failure, as QStash delivers a message. The Python
SDK's docs start a signed app this way (the ``qstash`` client's
``message.publish_json(url=endpoint)``): the endpoint takes the delivery as a first invocation
and publishes the run's Init message.

A message is a run of the built-in workflow ``upstash-message`` whose one step makes the
request: durable (a worker that dies mid-delivery leaves it to another), retried with the
workflow's backoff (``Upstash-Retries``, else 3), and failed once retries run out. It is not a
workflow run of the SDK, so ``client.logs`` does not list it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import httpx

from stepstream.errors import NonRetryableError, ValidationError
from stepstream.upstash.allow import policy_of
from stepstream.upstash.messages import Plain
from stepstream.upstash.names import DESTINATION, MESSAGE, endpoint_label
from stepstream.upstash.outbound import signed

if TYPE_CHECKING:
    from stepstream.workflow.context import WorkflowContext
    from stepstream.workflow.engine import Engine

DELIVERY_TIMEOUT = 60.0  # seconds the destination may take to answer


async def publish(engine: Engine, message: Plain) -> str:
    """Start the delivery of ``message``; its message id (the run's id). The run is labelled
    with its destination's path, and named after it in lists (``names.py``)."""
    return await engine.trigger(
        MESSAGE,
        asdict(message),
        delay=message.delay,
        headers={DESTINATION: message.url},
        labels=[endpoint_label(message.url)],
    )


async def deliver(engine: Engine, context: WorkflowContext) -> Any:
    """The run's body: the delivery, as one step retried until the destination answers 2xx."""
    message = Plain(**context.request_payload)

    async def attempt() -> dict[str, Any]:
        try:  # allowed when published; the allow-list of this process may be narrower
            policy_of(engine).check(message.url, "the message's destination")
        except ValidationError as exc:
            raise NonRetryableError(str(exc)) from None
        earlier = next((s for s in context.record.steps if s.position == 0), None)
        headers = {
            **message.headers,
            "upstash-message-id": context.workflow_run_id,
            "upstash-retried": str(earlier.attempts if earlier is not None else 0),
        }
        headers = signed(message.url, message.body, headers)
        try:
            answer = await engine.http_call(
                message.url, message.method, message.body, headers, DELIVERY_TIMEOUT
            )
        except httpx.HTTPError as exc:
            raise RuntimeError(f"delivering to {message.url} failed: {exc!r}") from None
        status = int(answer["status"])
        if not 200 <= status < 300:
            raise RuntimeError(f"{message.url} answered {status}: {str(answer['body'])[:200]}")
        return {"status": status}

    return await context.run("deliver", attempt, retries=message.retries)
