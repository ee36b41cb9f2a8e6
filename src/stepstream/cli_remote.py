"""What the client-side commands of ``stepstream`` share (``cli.py``, ``cli_schedules.py``):
the ``--url`` and ``--token`` options, a ``Client`` for them, failing with a message, and
running a coroutine."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

import click

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


def fail(exc: Exception) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {exc}")
    sys.exit(1)


def run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
