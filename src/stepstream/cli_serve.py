"""What the serving commands of ``stepstream`` (``dev``, ``server``, ``worker``) share: loading
the user's ``Workflows``, and starting on a backend and a port that work. A backend that does
not answer, a bad backend URL or a port in use is one line saying so and exit status 1, before
anything is served (not a traceback from the ASGI lifespan, nor a banner for a server that
never started)."""

from __future__ import annotations

import importlib
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from stepstream.cli_remote import fail, run_async
from stepstream.errors import StepstreamError

if TYPE_CHECKING:
    from stepstream.workflows import Workflows

PORT = click.IntRange(0, 65535)  # 0: any free port (the banner says which)


def load_workflows(spec: str, backend: str | None, retention: float | None = None) -> Workflows:
    """Import ``module:attribute`` (current directory first on ``sys.path``) and return the
    ``Workflows`` it names (or that an app object exposes as ``.workflows`` /
    ``.state.workflows``). ``backend`` and ``retention`` are exported as
    ``STEPSTREAM_BACKEND`` and ``STEPSTREAM_RETENTION`` first, so registries built with the
    defaults pick them up."""
    from stepstream.workflows import RETENTION_ENV, Workflows

    if backend:
        os.environ["STEPSTREAM_BACKEND"] = backend
    if retention is not None:
        os.environ[RETENTION_ENV] = str(retention)
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise click.UsageError(f"APP must look like module:attribute, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import {module_name!r}: {exc}") from exc
    except StepstreamError as exc:  # a bad backend URL, a workflow option refused ...
        fail(exc)
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


def check_backend(workflows: Workflows) -> None:
    """Open ``workflows``' backend once (connect, migrate) and close it: one that does not
    answer fails the command now, in one line."""
    from stepstream.backends import backend_from_url

    async def check() -> None:
        backend = backend_from_url(workflows.backend.url)
        await backend.open()
        await backend.close()

    try:
        run_async(check())
    except StepstreamError as exc:
        fail(exc)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``, or a usage error saying it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.UsageError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc} (another server there? "
            "--port N, or make dev PORT=N, picks another)"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(
    app: object,
    host: str,
    port: int,
    log_level: str,
    workflows: Workflows,
    banner: Callable[[int], str] | None = None,
) -> None:
    """Serve ``app`` with uvicorn on ``host``:``port`` once its backend answers and the port
    is ours; ``banner(port)`` is printed then."""
    import uvicorn

    from stepstream.realtime.channel import drain_all
    from stepstream.server.protocol import BoundedHttp

    check_backend(workflows)
    sock = bind(host, port)
    if banner is not None:
        click.echo(banner(sock.getsockname()[1]))
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
        http=BoundedHttp,
        log_level=log_level,
        timeout_graceful_shutdown=10,
    )
    Server(config).run(sockets=[sock])
