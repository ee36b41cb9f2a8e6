"""What may be registered as a workflow: an ``async def fn(context)``, or anything returning its
coroutine. An async generator is refused when registered; a plain ``def`` fails its runs with
the fix in the message (it failed them with Python's "can't be used in 'await' expression")."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from stepstream import ConfigurationError, WorkflowContext, Workflows
from tests.workflow.helpers import Harness, wait_for_state

pytestmark = pytest.mark.anyio


async def test_a_plain_def_workflow_fails_its_run_naming_the_fix(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: list[str] = []

    @workflows.workflow("report", retries=0)
    def report(context: WorkflowContext) -> str:  # type: ignore[arg-type]
        ran.append("body")
        return "done"

    await harness.worker(workflows)
    client = workflows.client()
    log = await wait_for_state(client, await client.trigger("report"))
    assert log["workflowState"] == "RUN_FAILED"
    assert log["error"] == (
        "TypeError: workflow 'report' returned a str instead of a coroutine: a workflow is an "
        "async def fn(context) that awaits its steps (await context.run('name', fn); the steps "
        "may be plain def functions)"
    )
    assert ran == ["body"] and log["steps"] == []  # once: not retried as if storage failed


def test_an_async_generator_workflow_is_refused() -> None:
    workflows = Workflows()

    async def numbers(context: WorkflowContext) -> Any:
        yield 1

    with pytest.raises(ConfigurationError, match="'numbers' is an async generator"):
        workflows.workflow("numbers")(numbers)


def test_wrapped_and_partial_async_workflows_are_accepted() -> None:
    workflows = Workflows()

    async def greet(context: WorkflowContext, greeting: str = "hi") -> str:
        return greeting

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(context: WorkflowContext) -> Any:
            return fn(context)  # a coroutine, awaited by the engine

        return wrapper

    workflows.workflow("wrapped")(logged(greet))
    workflows.workflow("partial")(functools.partial(greet, greeting="hello"))
    workflows.workflow("lambda")(lambda context: greet(context))
    workflows.workflow("unwrapped")(lambda context: greet(context))
    assert workflows.engine.registry.names == ["lambda", "partial", "unwrapped", "wrapped"]


async def test_a_callable_returning_no_coroutine_fails_its_run_saying_why(
    harness: Harness,
) -> None:
    workflows = harness.workflows()

    class Report:
        def __call__(self, context: WorkflowContext) -> str:
            return "done"

    workflows.workflow("report", retries=0)(Report())  # type: ignore[arg-type]
    await harness.worker(workflows)
    client = workflows.client()
    log = await wait_for_state(client, await client.trigger("report"))
    assert log["workflowState"] == "RUN_FAILED"
    assert log["error"].startswith(
        "TypeError: workflow 'report' returned a str instead of a coroutine: a workflow is an "
        "async def fn(context)"
    )
