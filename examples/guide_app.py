"""The Upstash "Workflow + Realtime" guide's Next.js example, as one stepstream app.

    uvicorn examples.guide_app:app        # from the repository root; embedded SQLite storage

serves what the guide's frontend expects, unchanged:

- ``POST /api/trigger`` with ``{"workflowType": "basic"}`` → ``{"workflowRunId": ...}``
- ``GET /api/realtime``: the SSE endpoint (@upstash/realtime 0.3 and 1.x clients work as is)
- the ``basic`` workflow, whose steps stream ``stepStart``/``stepFinish`` and a final
  ``runFinish`` on the channel named by the run id — built in, no emit code needed.

The guide's own hook and page (``examples/guide/``), bundled against ``@upstash/realtime@0.3.0``,
are served at ``/`` when built (``examples/guide/build.sh``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stepstream import Realtime, UnknownWorkflow, WorkflowContext, Workflows

realtime = Realtime()
workflows = Workflows(realtime=realtime)


@workflows.workflow("basic")
async def basic(context: WorkflowContext) -> dict[str, Any]:
    payload = context.request_payload
    user_id, action = payload.get("userId"), payload.get("action")

    async def validate() -> dict[str, Any]:
        if not user_id or not action:
            raise ValueError("Missing required fields")
        await asyncio.sleep(0.5)
        return {"valid": True, "userId": user_id, "action": action}

    async def process(data: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.5)
        return {"processed": True, **data}

    async def notify(data: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.3)
        return {"notified": data["userId"]}

    data = await context.run("validate-data", validate)
    processed = await context.run("process-data", process, data)
    await context.run("send-notification", notify, processed)
    return {"success": True, "workflowRunId": context.workflow_run_id}


async def trigger(request: Request) -> Response:
    # The app bounds the body (size, time) and checks it is JSON before this runs.
    try:
        workflow_type = (await request.json())["workflowType"]
        if not isinstance(workflow_type, str):
            raise TypeError
    except (ValueError, KeyError, TypeError, RecursionError):
        return JSONResponse({"error": 'send {"workflowType": "basic"}'}, status_code=400)
    try:
        run_id = await workflows.client().trigger(
            workflow_type, {"userId": "user-123", "action": "process-data"}
        )
    except UnknownWorkflow as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return JSONResponse({"workflowRunId": run_id})


app = workflows.asgi()
app.router.routes.insert(0, Route("/api/trigger", trigger, methods=["POST"]))
_built = Path(__file__).parent / "guide" / "dist"
if _built.is_dir():
    # The guide's page takes "/" (the stepstream dashboard is not served by this app).
    app.router.routes.insert(1, Route("/", lambda request: FileResponse(_built / "index.html")))
    app.router.routes.insert(2, Mount("/guide", StaticFiles(directory=_built)))
