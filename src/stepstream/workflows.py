"""``Workflows``: a registry of workflow definitions composed with storage and the engine, and
the factories of what runs them (in-process client, workers, the ASGI app).

The registry (``workflow.registry.Registry``) only knows definitions; this module sits at the
top of the layers, so it may import every part it composes (see docs/architecture.md).
"""

from __future__ import annotations

import os
from typing import Any

from stepstream.backends import Backend, backend_from_url
from stepstream.client import Client
from stepstream.errors import ConfigurationError
from stepstream.events import RunsUpdate, WorkflowUpdate
from stepstream.realtime.channel import Realtime
from stepstream.records import HistoryPolicy
from stepstream.server.app import StepstreamApp, workflows_app
from stepstream.upstash import enable as enable_upstash
from stepstream.workflow.engine import Engine
from stepstream.workflow.registry import Registry
from stepstream.workflow.worker import Worker

RETENTION_ENV = "STEPSTREAM_RETENTION"
UPSTASH_ENV = "STEPSTREAM_UPSTASH"


def retention_from_env() -> float | None:
    """``$STEPSTREAM_RETENTION`` as seconds (unset or empty: keep every run)."""
    text = os.environ.get(RETENTION_ENV, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigurationError(
            f"{RETENTION_ENV}={text!r}: give seconds, such as 604800 for a week"
        ) from None


class Workflows(Registry):
    """The workflows of an application, and where their runs are stored.

    >>> workflows = Workflows()                    # runs in $STEPSTREAM_BACKEND / a local file
    >>> @workflows.workflow("hello", retries=2)
    ... async def hello(context):
    ...     return await context.run("greet", lambda: "hi")

    With ``realtime``, each run streams the built-in ``workflow.update`` progress events on the
    channel named by its run id, and runs are stored in the realtime's backend.
    ``max_result_bytes``: the largest step result or workflow return value, as JSON text (1 MiB
    by default); a larger one fails the step without retries, saying so. ``retention``:
    seconds a finished run is kept before workers delete it with its channel history
    (default: ``$STEPSTREAM_RETENTION``, else for ever). ``upstash``: also serve Upstash
    Workflow SDK apps under ``/qstash`` (``stepstream.upstash.enable``; default:
    ``$STEPSTREAM_UPSTASH`` is ``1``).
    """

    def __init__(
        self,
        realtime: Realtime | None = None,
        *,
        backend: str | None = None,
        max_result_bytes: int = 1_048_576,
        retention: float | None = None,
        upstash: bool | None = None,
    ) -> None:
        super().__init__()
        if realtime is not None:
            if backend is not None:
                raise ConfigurationError(
                    "give backend= to the Realtime, not to Workflows: they share one store"
                )
            store: Backend = realtime.backend
            if "workflow.update" not in realtime.schema:
                realtime.schema.add("workflow.update", WorkflowUpdate)
            if "runs.update" not in realtime.schema:
                realtime.schema.add("runs.update", RunsUpdate)
        else:
            store = backend_from_url(backend)
        if retention is None:
            retention = retention_from_env()
        self.engine = Engine(
            self, store, realtime, max_result_bytes=max_result_bytes, retention=retention
        )
        if upstash is None:
            upstash = os.environ.get(UPSTASH_ENV, "").strip() in ("1", "true", "yes")
        if upstash:
            enable_upstash(self)

    @property
    def realtime(self) -> Realtime | None:
        return self.engine.realtime

    @property
    def backend(self) -> Backend:
        return self.engine.backend

    @property
    def history_policy(self) -> HistoryPolicy:
        return self.engine.policy

    @property
    def max_result_bytes(self) -> int:
        return self.engine.max_result_bytes

    async def open(self) -> None:
        """Open the store (the realtime's, if any). Idempotent."""
        await self.engine.open()

    async def aclose(self) -> None:
        """Close the engine's resources and the store."""
        await self.engine.close()

    def client(self) -> Client:
        """An in-process ``Client`` for this registry."""
        return Client(self)

    def worker(self, **options: Any) -> Worker:
        """A ``Worker`` executing this registry's runs in this process."""
        return Worker(self, **options)

    def asgi(self, **options: Any) -> StepstreamApp:
        """The stepstream ASGI app for this registry (API, SSE, dashboard; in-process workers
        unless ``workers=0``). Options: ``server.app.workflows_app``.

        Its ``lifespan`` opens the store and runs the workers. Served on its own (``uvicorn
        app:app``) it runs by itself; mounted in another app, that app must run it
        (``FastAPI(lifespan=app.lifespan)``, or ``async with app.lifespan(api):`` in a lifespan
        of your own), and until it does every request is a 503 saying so.

        >>> # api = FastAPI(lifespan=app.lifespan); api.mount("/stepstream", app)
        """
        return workflows_app(self, **options)
