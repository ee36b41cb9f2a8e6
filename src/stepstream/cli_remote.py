"""What the client-side commands of ``stepstream`` share (``cli.py``, ``cli_schedules.py``,
``cli_recovery.py``): the ``--url`` and ``--token`` options, a ``Client`` for them, failing with
a message, running a coroutine, and the options that choose runs (``--state``, ``--label``,
``--since``, ``--until``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from stepstream.clock import system_ms
from stepstream.errors import Unauthorized

if TYPE_CHECKING:
    from stepstream.client import Client

URL_OPTION = click.option(
    "--url",
    envvar="STEPSTREAM_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="the stepstream server (STEPSTREAM_URL)",
)
TOKEN_OPTION = click.option("--token", envvar="STEPSTREAM_TOKEN", help="API bearer token")


def client_for(url: str, token: str | None) -> Client:
    from stepstream.client import Client

    return Client(url=url, token=token)


def complain(exc: Exception) -> None:
    """Print ``error: <what the server said>`` on standard error; when no server answered at
    all, how to start one or point the command at another."""
    import httpx
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    if isinstance(exc, Unauthorized):
        console.print(
            "  The server wants its API token: --token <token> or STEPSTREAM_TOKEN=<token>, "
            "the value the server was started with.",
            highlight=False,
        )
    elif isinstance(exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout):
        console.print(
            "  Is a stepstream server running there? `stepstream dev` (or `make dev`) starts "
            "one; --url or STEPSTREAM_URL names another (`make dev PORT=8001` serves on "
            "http://127.0.0.1:8001).",
            highlight=False,
        )


def fail(exc: Exception) -> NoReturn:
    complain(exc)
    sys.exit(1)


def run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_state(value: str | None) -> str | None:
    """``failed``, ``FAILED`` or ``run_failed`` -> ``RUN_FAILED``; ``running`` (what the
    dashboard calls a run not finished) -> ``RUN_STARTED``."""
    if value is None:
        return None
    value = value.upper()
    if value == "RUNNING":
        return "RUN_STARTED"
    return value if value.startswith("RUN_") else "RUN_" + value


AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class Moment(click.ParamType):  # type: ignore[type-arg,unused-ignore]  # generic from click 8.2
    """A moment as epoch milliseconds, written as epoch ms (``1767225600000``), an ISO-8601
    date or datetime (``2026-01-05``, ``2026-01-05T09:30``: local time unless it names an
    offset such as ``Z`` or ``+01:00``), or an age meaning that long ago (``90s``, ``15m``,
    ``2h``, ``7d``, ``2w``)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text.isdigit():
            return int(text)
        age = AGE.fullmatch(text)
        if age is not None:
            return system_ms() - int(float(age[1]) * AGE_UNITS[age[2]] * 1000)
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text!r} is not a time: give epoch ms, an ISO-8601 date or datetime "
                "(2026-01-05T09:30) or an age such as 2h or 7d",
                param,
                ctx,
            )
        return int(moment.timestamp() * 1000)  # a naive datetime is read as local time


MOMENT = Moment()
TIME_HELP = "epoch ms, ISO-8601 (local time unless an offset is given) or an age: 2h, 7d"
LABEL_OPTION = click.option("--label", default=None, help="only runs carrying this label")
SINCE_OPTION = click.option(
    "--since", type=MOMENT, default=None, help=f"only runs created after this: {TIME_HELP}"
)
UNTIL_OPTION = click.option(
    "--until", type=MOMENT, default=None, help=f"only runs created before this: {TIME_HELP}"
)


DATA_HELP = "JSON, or @file, or - for standard input"


def json_data(data: str | None) -> Any:
    """``--data``: JSON text, ``@path`` (a file's JSON) or ``-`` (standard input's)."""
    if data is None:
        return None
    try:
        if data == "-":
            text = sys.stdin.read()
        elif data.startswith("@"):
            text = Path(data[1:]).read_text()
        else:
            text = data
    except OSError as exc:
        raise click.BadParameter(f"cannot read {data[1:]!r}: {exc}", param_hint="--data") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from None
