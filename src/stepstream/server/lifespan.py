"""What the stepstream app needs running while it serves: ``Lifespan`` (the store open, the
in-process workers, the GC tuned), and ``RequireLifespan``, which makes an app served without it
say so instead of accepting runs nobody will execute.

A Starlette or FastAPI app runs the lifespan of its own router only: an app mounted in it is
served, but its lifespan never runs. ``Lifespan`` can therefore be run by the host app too::

    stepstream_app = workflows.asgi()
    api = FastAPI(lifespan=stepstream_app.lifespan)   # or, in a lifespan of your own:
    #   async with stepstream_app.lifespan(api): yield
    api.mount("/stepstream", stepstream_app)
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from starlette.types import ASGIApp, Receive, Scope, Send

from stepstream.errors import DETAIL_HEADER, AppNotStarted
from stepstream.realtime.channel import Realtime
from stepstream.realtime.sse import error_response
from stepstream.workflow.engine import Engine
from stepstream.workflow.worker import Worker

GC_YOUNG_THRESHOLD = 50_000
WORKER_GRACE = 10.0  # seconds a stopping worker may finish what it holds before releasing it
log = logging.getLogger("stepstream.server")


class Lifespan:
    """Opens the store (``realtime``, and ``engine``'s if given), starts ``workers``
    in-process workers, and tunes the GC when it runs as the stepstream app's own lifespan
    (not a host's: ``tune_gc``); stops the workers and closes the store on the way out.

    Call it with any app: it is what the stepstream app's own router runs, and what a host app
    runs for a mounted one — ``FastAPI(lifespan=stepstream_app.lifespan)``, or
    ``async with stepstream_app.lifespan(api):`` inside the host's own lifespan. Entered again
    while it runs (the host's lifespan and the app's own), it starts nothing twice.
    """

    def __init__(
        self,
        realtime: Realtime,
        engine: Engine | None = None,
        *,
        workers: int = 0,
        concurrency: int = 100,
        lease: float = 15.0,
    ) -> None:
        self.realtime = realtime
        self.engine = engine
        self.workers = workers
        self.concurrency = concurrency
        self.lease = lease
        self.running = False
        self.owner: object = None  # the stepstream app this is the lifespan of

    @contextlib.asynccontextmanager
    async def __call__(self, app: object = None) -> AsyncIterator[None]:
        if self.running:
            yield
            return
        async with contextlib.AsyncExitStack() as stack:
            await self.realtime.open()
            stack.push_async_callback(self.realtime.aclose)
            if app is None or app is self.owner:
                # The GC is the process's: a host app that runs this lifespan decides its own.
                tune_gc()
            if self.engine is not None:
                await self.engine.open()
                stack.push_async_callback(self.engine.close)
            # Last in, first out: on the way out the workers stop (finishing or handing back
            # what they hold) while requests are still served, then requests are refused,
            # then the store closes.
            stack.callback(self._stopped)
            if self.engine is not None:
                for _ in range(self.workers):
                    worker = Worker(self.engine, concurrency=self.concurrency, lease=self.lease)
                    await worker.start()
                    stack.push_async_callback(worker.stop, WORKER_GRACE)
            self.running = True
            yield

    def _stopped(self) -> None:
        self.running = False


class RequireLifespan:
    """In an app mounted in another one, answers every request ``503 app_not_started`` (saying
    how to fix it) while ``lifespan`` is not running, and logs it once: mounted without its
    lifespan, an app with workflows would accept runs that no worker ever executes, and report
    itself healthy.

    Mounted: a host app's router dispatched the request (Starlette's router puts itself in the
    scope, ours comes after this middleware). An app called directly (a server with
    ``--lifespan off``, a test driving it) is the caller's business.
    """

    def __init__(self, app: ASGIApp, *, lifespan: Lifespan) -> None:
        self.app = app
        self.lifespan = lifespan
        self.warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.lifespan.running or "router" not in scope:
            await self.app(scope, receive, send)
            return
        error = AppNotStarted()
        if not self.warned:
            self.warned = True
            log.error("%s", error)
        detail = any(name == DETAIL_HEADER.encode() for name, _ in scope["headers"])
        await error_response(error, detail=detail)(scope, receive, send)


def tune_gc() -> None:
    """Tune the cyclic GC for a server holding thousands of SSE streams (the app's lifespan
    calls it at start-up; call it once in your own server that mounts ``handle``).

    Everything loaded so far (modules, schemas) lives as long as the process: ``gc.freeze``
    keeps it out of the full passes, which otherwise stall every stream at once. And the young
    generation is collected less often: a broadcast to thousands of streams has thousands of
    objects in flight, and each collection that catches them promotes them towards the full
    passes (250-300 ms stalls at 5,000 connections).
    """
    gc.freeze()
    gc.set_threshold(max(gc.get_threshold()[0], GC_YOUNG_THRESHOLD), 20, 20)
