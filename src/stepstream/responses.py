"""JSON answers written as stepstream writes JSON (``records.dumps``), for every HTTP route.

Starlette's ``JSONResponse`` encodes with ``ensure_ascii=False`` and fails on a lone surrogate,
which stored text may hold (a JavaScript string with an emoji cut in half, published through
the gateway): the route would answer 500. Here such a character is written as U+FFFD.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from stepstream.records import dumps


class Json(JSONResponse):
    """``JSONResponse``, encoded by ``records.dumps``: never fails on text it was given."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode()
