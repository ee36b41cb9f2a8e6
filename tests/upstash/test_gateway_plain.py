"""Plain QStash messages (``/v2/publish/{url}`` without workflow headers): one signed
delivery of the body to the URL, retried until it answers 2xx (``upstash/plain.py``)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import anyio
import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.upstash.test_gateway import AUTH, CURRENT_KEY, serve_uvicorn, stepstream_server

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("signing_key"),
]


class Endpoint:
    """Records each request; answers 500 to the first, 200 after."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], bytes]] = []
        self.got = anyio.Event()

    async def handle(self, request: Request) -> Response:
        self.seen.append((dict(request.headers), await request.body()))
        if len(self.seen) == 2:
            self.got.set()
        return Response(status_code=500 if len(self.seen) == 1 else 200)


async def test_a_plain_message_is_delivered_signed_and_retried(tmp_path: Path) -> None:
    endpoint = Endpoint()
    app = Starlette(routes=[Route("/hook", endpoint.handle, methods=["PUT"])])
    async with (
        stepstream_server(tmp_path / "plain.db") as base,
        serve_uvicorn(app) as target,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = f"{target}/hook"
        answer = await client.post(
            f"{base}/qstash/v2/publish/{url}",
            content=b'{"n": 1}',
            headers={
                **AUTH,
                "content-type": "application/json",
                "upstash-method": "PUT",
                "upstash-retries": "2",
                "upstash-forward-x-probe": "yes",
            },
        )
        assert answer.status_code == 200, answer.text
        message_id = answer.json()["messageId"]
        with anyio.fail_after(20):
            await endpoint.got.wait()
            while True:
                run = (await client.get(f"{base}/api/runs/{message_id}", headers=AUTH)).json()
                if run["workflowState"] != "RUN_STARTED":
                    break
                await anyio.sleep(0.05)  # polling, not an assertion
    assert run["workflowState"] == "RUN_SUCCESS"
    assert [headers["upstash-retried"] for headers, _ in endpoint.seen] == ["0", "1"]
    for headers, body in endpoint.seen:
        assert body == b'{"n": 1}'
        assert headers["x-probe"] == "yes"
        assert headers["content-type"] == "application/json"
        assert headers["upstash-message-id"] == message_id
        claims = jwt.decode(headers["upstash-signature"], CURRENT_KEY, algorithms=["HS256"])
        digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
        assert (claims["sub"], claims["body"]) == (url, digest)


async def test_what_plain_messages_can_not_do_is_refused(tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "refused.db") as base,
        httpx.AsyncClient(timeout=10) as client,
    ):
        topic = await client.post(f"{base}/qstash/v2/publish/my-topic", headers=AUTH, content=b"x")
        assert topic.status_code == 400
        assert "topics, URL groups and queues" in topic.json()["error"]
        callback = await client.post(
            f"{base}/qstash/v2/publish/http://127.0.0.1:9/x",
            headers={**AUTH, "upstash-callback": "http://127.0.0.1:9/cb"},
            content=b"x",
        )
        assert callback.status_code == 400
        assert "upstash-callback on a plain message" in callback.json()["error"]


async def test_numbers_out_of_range_are_refused_with_a_400(tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "numbers.db") as base,
        httpx.AsyncClient(timeout=10) as client,
    ):
        for value in ("1e400", "inf", "nan", "-1e400", "99999999999999999999"):
            refused = await client.post(
                f"{base}/qstash/v2/publish/http://127.0.0.1:9/x",
                headers={**AUTH, "upstash-not-before": value},
                content=b"x",
            )
            assert refused.status_code == 400, (value, refused.text)
            assert "Upstash-Not-Before" in refused.json()["error"]
        for query in ("count=%C2%B2", "count=1" + "0" * 5000, "fromDate=%C2%B2", "toDate=1e3"):
            refused = await client.get(f"{base}/qstash/v2/workflows/events?{query}", headers=AUTH)
            assert refused.status_code == 400, (query, refused.text)
