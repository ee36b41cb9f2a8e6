"""Which destinations the gateway may send requests to (``upstash/allow.py``)."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from stepstream.errors import ConfigurationError, ValidationError
from stepstream.upstash.allow import ALLOW_ENV, Allow
from tests.upstash.harness import NODE_DIR, node_env
from tests.upstash.test_gateway import AUTH, sdk_client, sdk_env, stepstream_server


def test_any_http_url_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    policy = Allow.of(None)
    for url in ("http://localhost:3000/api/wf", "https://10.0.0.7/x", "http://app"):
        policy.check(url, "the workflow endpoint")
    for url in ("file:///etc/passwd", "ftp://host/x", "/relative", "http://"):
        with pytest.raises(ValidationError, match="not an absolute http"):
            policy.check(url, "the workflow endpoint")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://app.internal:3000/api/workflow", True),
        ("HTTP://APP.INTERNAL:3000/api/x", True),
        ("http://app.internal:3000", False),
        ("http://app.internal:30001/api/workflow", False),
        ("http://app.internal:3000@evil.example/api/x", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("https://hooks.example.com/", True),
        ("https://hooks.example.com", True),
        ("https://hooks.example.com.evil.io/", False),
    ],
)
def test_only_the_given_prefixes(url: str, allowed: bool) -> None:
    policy = Allow.of(["http://app.internal:3000/api/", "https://hooks.example.com"])
    if allowed:
        policy.check(url, "context.call")
    else:
        with pytest.raises(ValidationError, match=r"not allowed.*STEPSTREAM_UPSTASH_ALLOW"):
            policy.check(url, "context.call")


def test_prefixes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, " http://a:1/ , https://b/x ")
    assert Allow.of(None).prefixes == ("http://a:1/", "https://b/x")
    monkeypatch.setenv(ALLOW_ENV, "a:1")
    with pytest.raises(ConfigurationError, match="'a:1' must be an absolute http"):
        Allow.of(None)


@pytest.mark.anyio
async def test_a_refused_endpoint_fails_the_sdk_trigger(
    node: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an allow-list, the SDK's own ``Client.trigger`` to an endpoint outside it gets
    the reason, and no run is created; one inside it is accepted."""
    monkeypatch.setenv(ALLOW_ENV, "http://127.0.0.1:9/allowed/")
    async with stepstream_server(tmp_path / "allow.db") as base:
        refused = await anyio.run_process(
            [node, "client.mjs", "trigger", "http://169.254.169.254/latest/x", "{}"],
            cwd=NODE_DIR,
            env=node_env(sdk_env(base)),
            check=False,
        )
        assert refused.returncode != 0
        said = refused.stderr.decode() + refused.stdout.decode()
        assert "http://169.254.169.254/latest/x is not allowed" in said, said
        assert "STEPSTREAM_UPSTASH_ALLOW" in said, said
        async with httpx.AsyncClient(headers=AUTH) as client:
            assert (await client.get(f"{base}/api/runs")).json()["runs"] == []
            answer = await sdk_client(node, base, "trigger", "http://127.0.0.1:9/allowed/wf", "{}")
            run = (await client.get(f"{base}/api/runs/{answer['workflowRunId']}")).json()
            assert run["workflowName"] == "upstash"


def test_workflows_serve_the_gateway_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from stepstream import Workflows
    from stepstream.upstash import WORKFLOW

    monkeypatch.delenv("STEPSTREAM_UPSTASH", raising=False)
    assert Workflows(backend="memory://").find(WORKFLOW) is None
    assert Workflows(backend="memory://", upstash=True).find(WORKFLOW) is not None
    monkeypatch.setenv("STEPSTREAM_UPSTASH", "1")
    assert Workflows(backend="memory://").find(WORKFLOW) is not None


@pytest.mark.anyio
async def test_the_gateway_workflows_are_not_listed_nor_triggered_by_hand() -> None:
    from stepstream import Workflows
    from stepstream.server.wire import workflow_names
    from stepstream.upstash import WORKFLOW

    workflows = Workflows(backend="memory://", upstash=True)
    workflows.workflow("mine")(_never)
    assert workflow_names(workflows.engine)["workflows"] == ["mine"]
    app = workflows.asgi(workers=0)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            listed = (await http.get("/api/workflows")).json()["workflows"]
            refused = await http.post(
                f"/api/workflows/{WORKFLOW}", json={}, headers={"content-type": "application/json"}
            )
    assert listed == ["mine"]
    assert refused.status_code == 422
    assert "started through /qstash" in refused.json()["error"]["message"]


async def _never(context: object) -> None:
    raise AssertionError("not run in this test")
