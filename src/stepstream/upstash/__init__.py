"""The QStash gateway: stepstream serves QStash's workflow API under ``/qstash``, so an app
written with ``@upstash/workflow`` runs on stepstream unchanged (DESIGN §15)::

    import stepstream.upstash
    workflows = Workflows(realtime=Realtime())
    stepstream.upstash.enable(workflows)   # in the server, and in every worker process
    app = workflows.asgi()
    # the app: QSTASH_URL=http://<stepstream>/qstash QSTASH_TOKEN=<STEPSTREAM_TOKEN>

How it maps onto the engine (docs/upstash-protocol.md has the protocol):

- **A run per SDK run.** The Init message (``Client.trigger`` publishes it through
  ``/v2/batch``) becomes ``Engine.trigger`` of the built-in workflow ``upstash``, with the SDK's
  run id, the payload, the labels of ``Upstash-Label`` and the headers every delivery carries
  (the endpoint URL among them). It is an ordinary run: listed (as ``upstash <endpoint path>``,
  that path being one of its labels: ``names.py``), logged, cancellable, with its
  ``workflow.update`` events.
- **Deliveries are the run's execution.** The built-in workflow's body is QStash's delivery loop
  (``delivery.Delivery``): a worker claims the run with a lease like any other, POSTs the
  history to the endpoint (signed with ``QSTASH_CURRENT_SIGNING_KEY`` when set, over a
  kept-alive connection, ``connections.py``; a large history to a TypeScript endpoint goes
  empty and the SDK fetches it, ``lazy.py``) and acts on the answer. A worker that dies
  mid-delivery loses its lease; another claims the run and delivers again (QStash is
  at-least-once too).
- **Published steps are recorded by the lease holder.** The SDK publishes a step's result
  while its delivery request is still open. When that delivery runs in the process whose route
  receives the publish, the route hands the step to it (``handoff.py``): the delivery records
  it as a stepstream step with its ``stepStart``/``stepFinish`` events in one write fenced by
  its own lease (``Engine.save_steps``), and the route answers once that write is durable (so
  the SDK's client retries a publish a crash interrupted). Otherwise (another process, a late
  publish, calls, invokes and plans) the route only queues it in the run's inbox (an
  ``EntryStore`` entry per step, created once: a duplicate publish is acknowledged and
  dropped); the delivering worker, once the endpoint answered, records each queued step the
  same way, then deletes the entry. Why not record in the route, fenced by the run's current
  lease? Only the execution that holds the lease knows which steps it already recorded; two
  writers (a route handling a late publish from a dead worker's request, and the new worker)
  could both record one step. With one writer per run, a position that holds a finished step
  is never written again, and recovery is simple: a worker first drains what a dead
  predecessor's delivery left queued, so those steps are not run again.
- **Ending.** ``DELETE /v2/workflows/runs/{id}?cancel=false`` queues the result; the worker
  ends the loop with it, so the run finishes ``RUN_SUCCESS`` with it as ``workflowRunResponse``.
  ``cancel=true`` and ``client.cancel`` are ``Engine.cancel`` (the worker's next write is then
  refused by the lease).
- **Sleeps** are the run's durable timer: the step is recorded in progress with its wake time
  (from ``Upstash-Delay`` / ``Upstash-Not-Before``), the run suspends until then, and the next
  delivery completes it first.
- **Failed deliveries** (non-2xx, network errors) are failed attempts of the step the SDK names
  in ``Upstash-Error-Step-Name`` (``delivery`` if none), retried with the workflow's backoff
  (``Upstash-Retries`` of the trigger, else 3), ``Retry-After`` on a 429; a 489 or exhausted
  retries fail the run, after its failure URL (``failureFunction`` / ``failureUrl``) got the
  failure callback (``outbound.py``).
- **Waits** (``POST /v2/wait/{eventId}``) are the engine's Wait steps, registered by the worker
  with ``Engine.wait_event``: every notify (``/v2/notify``, ``POST /api/events/{id}``,
  ``stepstream notify``, lookback with a run id) resolves them; the history hands the data back
  as the SDK reads it (``history.py``).
- **``context.call``** is made by the worker itself, and its answer recorded as the step's result
  (no callback round trip: the SDK cannot tell, and one delivery is saved).
- **Parallel steps** (any kind): the plans are kept per run (``plans.py``); each plan still to
  run gets its own delivery (all at once; a sleep's once it is over), the results (and the
  calls, waits and invokes those deliveries publish) are recorded at their positions, then the
  whole history goes.

- **``context.invoke``** starts the child as a gateway run with the invoking run as its
  parent (``Engine.trigger(parent=...)``): the child's end resolves the invoke step, as for a
  native invoke, and the history hands the SDK ``{body, isFailed, isCanceled}``.
- **The DLQ** is the failed gateway runs (``dlqId`` = run id): resume and restart are
  ``recovery.resume`` / ``recovery.restart``, with the SDK's ``retries`` / ``flowControl``
  overrides replacing the run's; the failure callback is kept to be sent again (``dlq.py``).
- **Plain QStash messages** (``/v2/publish/{url}`` without workflow headers, how the Python
  SDK's docs start a signed app) are runs of a second built-in workflow, ``upstash-message``,
  whose one step delivers the message, signed, retried like a step (``plain.py``).
- **Flow control** (``Upstash-Flow-Control-*``) is the run's ``FlowLimits``: a delivery is
  the step execution that takes a slot. **Retry delays** (``Upstash-Retry-Delay``) are
  evaluated by a whitelisting ``ast`` walker (``delay.py``).

- **Webhooks** (``createWebhook`` / ``waitForWebhook``): the hook URL is a gateway route the
  app's ``Guard`` lets through without the API token; a call is a notify of the hook's random
  event id for that run (``hooks.py``).

Not served yet (the routes answer 400 naming it): topics, queues and schedules.

The run's ``workflow`` is ``upstash`` for every endpoint: workers claim runs by the exact names
registered with them, so a per-endpoint name would need each worker to know every endpoint.
Instead each run is labelled with its endpoint's path and lists name it ``upstash <path>``
(``names.py``).
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from stepstream.upstash.allow import POLICIES, Allow
from stepstream.upstash.delivery import Delivery
from stepstream.upstash.gateway import Gateway
from stepstream.upstash.lazy import LAZY_OVER, LIMITS
from stepstream.upstash.names import MESSAGE, WORKFLOW
from stepstream.upstash.plain import deliver as deliver_message
from stepstream.workflow.context import WorkflowContext
from stepstream.workflow.engine import Engine, HasEngine, engine_of

__all__ = ["WORKFLOW", "enable", "gateway_routes"]


def enable(
    workflows: Engine | HasEngine,
    *,
    retries: int = 3,
    allow: list[str] | None = None,
    lazy_over: int = LAZY_OVER,
) -> None:
    """Serve ``@upstash/workflow`` apps: register the gateway's built-in workflows (``upstash``,
    ``upstash-message``) so this process's workers deliver gateway runs and plain messages, and
    ``/qstash`` answers. Call it on the
    ``Workflows`` of the server and of every worker process. ``retries``: delivery retries of a
    run whose trigger gave no ``Upstash-Retries``. ``allow``: the URL prefixes deliveries,
    failure callbacks and ``context.call`` may reach (default ``$STEPSTREAM_UPSTASH_ALLOW``,
    comma separated, else any http(s) URL; see ``allow.py``). ``lazy_over``: a delivery whose
    history is larger (bytes) goes to a ``@upstash/workflow`` endpoint with an empty body, and
    the SDK fetches the history (``lazy.py``). Idempotent.

    >>> # stepstream.upstash.enable(workflows); app = workflows.asgi()
    """
    engine = engine_of(workflows)
    POLICIES[engine] = Allow.of(allow)
    LIMITS[engine] = lazy_over
    if engine.registry.find(WORKFLOW) is not None:
        return

    async def deliver(context: WorkflowContext) -> object:
        return await Delivery(engine, context).loop()

    async def message(context: WorkflowContext) -> object:
        return await deliver_message(engine, context)

    engine.registry.workflow(WORKFLOW, retries=retries, internal=True)(deliver)
    engine.registry.workflow(MESSAGE, retries=retries, internal=True)(message)


def gateway_routes(engine: Engine) -> list[BaseRoute]:
    """The ``/qstash`` mount of the app (answering 404 until ``enable`` is called)."""
    return Gateway(engine).routes()
