"""The ``stepstream`` command: a thin shell over the public API."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from stepstream import __version__
from stepstream.backends import DEFAULT_URL

if TYPE_CHECKING:
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

    With no APP, serves the live demo."""
    if app is None:
        from stepstream.server.demo import demo_app

        where = backend or os.environ.get("STEPSTREAM_BACKEND") or DEFAULT_URL
        click.echo(f"stepstream dev: open http://{host}:{port}/  (backend: {where})")
        _serve(demo_app(backend), host, port, log_level)
        return
    workflows = load_workflows(app, backend)
    click.echo(f"stepstream dev: {', '.join(workflows.names)} on http://{host}:{port}/")
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
@click.option("--lease", default=30.0, show_default=True, help="seconds a claimed run is held")
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


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
