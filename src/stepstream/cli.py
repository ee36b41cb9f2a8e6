"""The ``stepstream`` command: a thin shell over the public API."""

from __future__ import annotations

import os
import sys

import click

from stepstream import __version__


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


@main.command()
@click.argument("app", required=False)
@click.option(
    "--backend",
    envvar="STEPSTREAM_BACKEND",
    help="sqlite:///file.db (default) or redis://host:6379/0",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--log-level", default="info", show_default=True)
def dev(app: str | None, backend: str | None, host: str, port: int, log_level: str) -> None:
    """Serve the API, SSE and the demo page in one process on a local SQLite file."""
    sys.path.insert(0, os.getcwd())
    if app is not None:
        raise click.UsageError(
            "serving your own APP arrives with the workflow engine; "
            "run `stepstream dev` for the demo"
        )
    from stepstream.server.demo import demo_app

    click.echo(
        f"stepstream dev: open http://{host}:{port}/  (backend: {backend or 'sqlite:///.stepstream/stepstream.db'})"
    )
    _serve(demo_app(backend), host, port, log_level)


if __name__ == "__main__":
    main()
