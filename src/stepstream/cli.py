"""The ``stepstream`` command: a thin shell over the public API."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from stepstream import __version__
from stepstream.backends import DEFAULT_URL
from stepstream.errors import StepstreamError
from stepstream.workflow.records import RunState

if TYPE_CHECKING:
    from stepstream.workflow.client import Client
    from stepstream.workflow.registry import Workflows


def _serve(app: object, host: str, port: int, log_level: str) -> None:
    import uvicorn

    from stepstream.realtime.channel import drain_all

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            # uvicorn waits for open responses before it stops; SSE responses would hold it
            # until max_duration. Tell them to send "reconnect" and end now.
            drain_all()
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        loop=loop,
        http="httptools",
        log_level=log_level,
        timeout_graceful_shutdown=10,
    )
    Server(config).run()


@click.group()
@click.version_option(__version__, prog_name="stepstream")
def main() -> None:
    """Durable background workflows whose progress streams live to the browser."""


BACKEND_HELP = "sqlite:///file.db (default) or redis://host:6379/0; sets STEPSTREAM_BACKEND"


def load_workflows(spec: str, backend: str | None) -> Workflows:
    """Import ``module:attribute`` (current directory first on ``sys.path``) and return the
    ``Workflows`` it names (or that an app object exposes as ``.workflows`` /
    ``.state.workflows``). ``backend`` is exported as ``STEPSTREAM_BACKEND`` first, so
    registries built with the default backend pick it up."""
    from stepstream.workflow.registry import Workflows

    if backend:
        os.environ["STEPSTREAM_BACKEND"] = backend
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise click.UsageError(f"APP must look like module:attribute, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.UsageError(f"{module_name!r} has no attribute {attribute!r}") from None
    for candidate in (
        target,
        getattr(target, "workflows", None),
        getattr(getattr(target, "state", None), "workflows", None),
    ):
        if isinstance(candidate, Workflows):
            return candidate
    raise click.UsageError(f"{spec} is a {type(target).__name__}, not a stepstream Workflows")


def _app_options(function: Callable[..., None]) -> Callable[..., None]:
    function = click.option("--log-level", default="info", show_default=True)(function)
    function = click.option("--port", default=8000, show_default=True, type=int)(function)
    function = click.option("--host", default="127.0.0.1", show_default=True)(function)
    function = click.option("--backend", help=BACKEND_HELP)(function)
    return function


@main.command()
@click.argument("app", required=False)
@_app_options
def dev(app: str | None, backend: str | None, host: str, port: int, log_level: str) -> None:
    """API, SSE, dashboard and in-process workers in one process (embedded SQLite default).

    With no APP, serves the built-in examples: basic, failing, approval, parallel."""
    workflows = load_workflows(app or "stepstream.examples:workflows", backend)
    where = backend or os.environ.get("STEPSTREAM_BACKEND") or DEFAULT_URL
    click.echo(
        f"stepstream dev: workflows {', '.join(workflows.names)}; "
        f"open http://{host}:{port}/  (backend: {where})"
    )
    _serve(workflows.asgi(workers=1), host, port, log_level)


@main.command()
@click.argument("app")
@_app_options
@click.option("--workers", default=0, show_default=True, help="in-process workers (0: none)")
def server(
    app: str, backend: str | None, host: str, port: int, log_level: str, workers: int
) -> None:
    """API + SSE + dashboard, stateless: run several behind a load balancer."""
    workflows = load_workflows(app, backend)
    _serve(workflows.asgi(workers=workers), host, port, log_level)


@main.command()
@click.argument("app")
@click.option("--backend", help=BACKEND_HELP)
@click.option("--concurrency", default=100, show_default=True, help="runs executed at once")
@click.option("--lease", default=15.0, show_default=True, help="seconds a claimed run is held")
def worker(app: str, backend: str | None, concurrency: int, lease: float) -> None:
    """Execute runs (no HTTP). SIGTERM/SIGINT: stop claiming, finish or release what is held."""
    workflows = load_workflows(app, backend)

    async def run() -> None:
        pool = workflows.worker(concurrency=concurrency, lease=lease)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await pool.start()
        click.echo(f"stepstream worker {pool.owner}: {', '.join(workflows.names)}", err=True)
        try:
            await stop.wait()
        finally:
            await pool.stop(grace=lease / 2)
            await workflows.engine.aclose()
            await workflows.aclose()

    _run(run())


URL_OPTION = click.option(
    "--url",
    envvar="STEPSTREAM_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="the stepstream server (STEPSTREAM_URL)",
)
TOKEN_OPTION = click.option("--token", envvar="STEPSTREAM_TOKEN", help="API bearer token")


def _client(url: str, token: str | None) -> Client:
    from stepstream.workflow.client import Client

    return Client(url=url, token=token)


def _fail(exc: Exception) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {exc}")
    sys.exit(1)


@main.command()
@click.argument("name")
@click.option("--data", default=None, help="the request payload, as JSON")
@click.option("--id", "run_id", default=None, help="choose the run id (gets the wfr_ prefix)")
@click.option("--delay", type=float, default=None, help="start after this many seconds")
@click.option("--follow", is_flag=True, help="show live step progress until the run ends")
@URL_OPTION
@TOKEN_OPTION
def trigger(
    name: str,
    data: str | None,
    run_id: str | None,
    delay: float | None,
    follow: bool,
    url: str,
    token: str | None,
) -> None:
    """Start a run of workflow NAME. With --follow, exit 0 on success and 1 on failure."""
    try:
        body = None if data is None else json.loads(data)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from None

    async def go() -> int:
        client = _client(url, token)
        try:
            new_id = await client.trigger(name, body, workflow_run_id=run_id, delay=delay)
        except StepstreamError as exc:
            _fail(exc)
        finally:
            await client.aclose()
        if not follow:
            click.echo(new_id)
            return 0
        from stepstream.console import follow_run

        return await follow_run(url, new_id, token)

    sys.exit(_run(go()))


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="print the log as JSON")
@URL_OPTION
@TOKEN_OPTION
def logs(run_id: str, as_json: bool, url: str, token: str | None) -> None:
    """Show a run's log: state, payload, result and a table of its steps."""

    async def go() -> dict[str, Any]:
        client = _client(url, token)
        try:
            return await client.logs(run_id)
        except StepstreamError as exc:
            _fail(exc)
            raise
        finally:
            await client.aclose()

    log = _run(go())
    if as_json:
        click.echo(json.dumps(log, indent=2))
        return
    from stepstream.console import print_log

    print_log(log)


@main.command()
@click.option("--state", type=click.Choice([s.value for s in RunState]), default=None)
@click.option("--workflow", default=None)
@click.option("--count", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@URL_OPTION
@TOKEN_OPTION
def runs(
    state: str | None, workflow: str | None, count: int, as_json: bool, url: str, token: str | None
) -> None:
    """List runs, newest first."""

    async def go() -> dict[str, Any]:
        client = _client(url, token)
        try:
            return await client.runs(state=state, workflow=workflow, count=count)
        except StepstreamError as exc:
            _fail(exc)
            raise
        finally:
            await client.aclose()

    page = _run(go())
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    from stepstream.console import print_runs

    print_runs(page["runs"])


@main.command()
@click.argument("channel")
@click.option("--history", is_flag=True, help="print stored events first")
@URL_OPTION
@TOKEN_OPTION
def tail(channel: str, history: bool, url: str, token: str | None) -> None:
    """Print a channel's events as they arrive, one JSON object per line (Ctrl-C to stop)."""
    from stepstream.realtime.remote import subscribe_remote

    async def go() -> None:
        endpoint = url.rstrip("/") + "/api/realtime"
        try:
            async for message in subscribe_remote(
                endpoint, [channel], history=history, token=token
            ):
                line = {"id": message.id, "event": message.event, "data": message.data}
                click.echo(json.dumps(line), nl=True)
        except StepstreamError as exc:
            _fail(exc)

    with contextlib.suppress(KeyboardInterrupt):
        _run(go())


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    main()
