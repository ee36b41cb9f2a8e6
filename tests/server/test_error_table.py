"""The error table (``errors.py``): every error a user can see has one wire code and HTTP status,
and comes back from the wire as the error the server raised, built by its constructor."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from stepstream import Realtime, Workflows
from stepstream.errors import (
    DETAIL_HEADER,
    ERROR_CODES,
    BackendError,
    BackendUnavailable,
    FieldError,
    InvalidToken,
    StepstreamError,
    Unauthorized,
    error_body,
    error_from_body,
)

SAMPLES: dict[str, Any] = {
    "run_id": "wfr_x",
    "name": "nope",
    "known": ["a", "b"],
    "event_id": "approve-1",
    "channel": "feed",
    "cursor": "1-0",
    "limit": 10,
    "seconds": 1.5,
    "state": "RUN_FAILED",
    "error": "boom",
    "step": "charge",
    "message": "what went wrong",
    "attempts": 3,
    "errors": [FieldError("stepName", "Field required")],
}


def sample(cls: type[StepstreamError]) -> StepstreamError:
    if not cls.fields:
        return cls("what went wrong")
    return cls(**{name: SAMPLES[name] for name in cls.fields})


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_error_comes_back_from_the_wire_as_itself(code: str) -> None:
    cls = ERROR_CODES[code]
    assert cls.code == code and 400 <= cls.status <= 599
    error = sample(cls)
    rebuilt = error_from_body(error_body(error, detail=True), cls.status)
    assert type(rebuilt) is cls and str(rebuilt) == str(error)
    for name in cls.fields:
        assert getattr(rebuilt, name) == getattr(error, name), name
    # Without the detail, the body is exactly DESIGN §5's.
    assert error_body(error) == {"error": {"code": code, "message": str(error)}}


def test_a_subclass_without_a_code_travels_as_its_parent() -> None:
    assert type(error_from_body(error_body(InvalidToken("expired")), 401)) is Unauthorized


def test_a_remote_503_is_backend_unavailable_and_so_a_backend_error() -> None:
    for sent in (BackendUnavailable("down"), BackendError("down")):
        down = error_from_body(error_body(sent), 503)
        assert type(down) is BackendUnavailable and str(down) == "down"
        assert isinstance(down, BackendError) and isinstance(down, ConnectionError)


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ("<html>bad gateway</html>", 502, BackendUnavailable),
        ({"unexpected": True}, 400, StepstreamError),
        ({"error": {"code": "from_a_newer_server", "message": "m"}}, 400, StepstreamError),
        ({"error": {"code": "run_not_found", "message": "m"}}, 404, StepstreamError),  # no detail
        ({"error": {"code": "run_not_found", "message": "m", "detail": {"x": 1}}}, 404,
         StepstreamError),
    ],
)  # fmt: skip
def test_what_is_not_a_rebuildable_error_is_still_a_stepstream_error(
    body: object, status: int, kind: type[StepstreamError]
) -> None:
    assert type(error_from_body(body, status)) is kind


@pytest.mark.anyio
async def test_the_api_sends_the_detail_only_when_asked(tmp_path: Any) -> None:
    workflows = Workflows(realtime=Realtime(backend=f"sqlite:///{tmp_path / 'detail.db'}"))
    app = workflows.asgi(workers=0)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.lifespan(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http,
    ):
        plain = (await http.get("/api/runs/wfr_gone")).json()
        asked = (await http.get("/api/runs/wfr_gone", headers={DETAIL_HEADER: "1"})).json()
    message = "no workflow run 'wfr_gone'"
    assert plain == {"error": {"code": "run_not_found", "message": message}}
    assert asked["error"]["detail"] == {"run_id": "wfr_gone"}
