# examples/fastapi_app.py: stepstream inside a FastAPI app, its worker in the same process
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from stepstream import Realtime, WorkflowContext, Workflows, handle

realtime = Realtime()  # $STEPSTREAM_BACKEND, else .stepstream/stepstream.db
workflows = Workflows(realtime=realtime)


@workflows.workflow("greet")
async def greet(context: WorkflowContext) -> str:
    name = context.request_payload["name"]
    return await context.run("compose", lambda: f"hello {name}")


stepstream_app = workflows.asgi()  # API, SSE, dashboard; its lifespan runs one worker


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    # ... your own start-up ...
    async with stepstream_app.lifespan(api):  # opens the store, starts the worker
        yield
    # ... your own shutdown ...


api = FastAPI(lifespan=lifespan)
api.mount("/stepstream", stepstream_app)  # dashboard at /stepstream/, API at /stepstream/api/
# SSE at exactly /sse (a route, not a mount); each channel needs a token minted below
api.add_route("/sse", handle(realtime, require_token=True))


@api.post("/greetings")
async def start_greeting(name: str) -> dict[str, str]:
    run_id = await workflows.client().trigger("greet", {"name": name})
    # The page that started the run may watch it: /sse?channels=<run id>&token=<token>
    return {"workflowRunId": run_id, "token": realtime.token([run_id], ttl=600)}
