"""``example=`` on a workflow: the payload the dashboard's New run form offers, served by
``GET /api/workflows`` (``client.workflows()``); it must be JSON."""

from __future__ import annotations

import pytest

from stepstream import ConfigurationError, WorkflowContext, Workflows

pytestmark = pytest.mark.anyio


async def test_examples_are_served_by_workflow_name() -> None:
    workflows = Workflows(backend="memory://")

    @workflows.workflow("order", example={"sku": "A1", "qty": 2})
    async def order(context: WorkflowContext) -> None:
        return None

    @workflows.workflow("plain")
    async def plain(context: WorkflowContext) -> None:
        return None

    try:
        answer = await workflows.client().workflows()
    finally:
        await workflows.aclose()
    assert answer == {
        "workflows": ["order", "plain"],
        "paused": [],
        "examples": {"order": {"sku": "A1", "qty": 2}},
    }


def test_an_example_must_be_json() -> None:
    workflows = Workflows(backend="memory://")
    with pytest.raises(ConfigurationError, match="example of workflow 'bad' is not JSON"):
        workflows.workflow("bad", example={"when": object()})
