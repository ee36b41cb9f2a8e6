# examples/starlette_app.py: stepstream inside a Starlette app; its workers run apart, as
#   stepstream worker examples.starlette_app:workflows
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from stepstream import Realtime, WorkflowContext, Workflows, handle

realtime = Realtime()  # $STEPSTREAM_BACKEND, else .stepstream/stepstream.db
workflows = Workflows(realtime=realtime)


@workflows.workflow("greet")
async def greet(context: WorkflowContext) -> str:
    name = context.request_payload["name"]
    return await context.run("compose", lambda: f"hello {name}")


stepstream_app = workflows.asgi(workers=0)  # API, SSE, dashboard; no worker in this process

app = Starlette(
    routes=[
        Mount("/stepstream", stepstream_app),  # dashboard at /stepstream/, API under it
        # SSE at exactly /sse (a route, not a mount), for channels granted by realtime.token()
        Route("/sse", handle(realtime, require_token=True)),
    ],
    lifespan=stepstream_app.lifespan,  # nothing else to start: the app's own lifespan, as is
)
