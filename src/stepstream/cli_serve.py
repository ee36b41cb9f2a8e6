"""What the serving commands of ``stepstream`` (``dev``, ``server``, ``worker``) share: loading
the user's ``Workflows``, and starting on a backend and a port that work. A backend that does
not answer, a bad backend URL or a port in use is one line saying so and exit status 1 or 2,
before anything is served (not a traceback from the ASGI lifespan, nor a banner for a server
that never started)."""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from stepstream.cli_remote import fail, run_async
from stepstream.errors import StepstreamError

if TYPE_CHECKING:
    from stepstream.server.app import StepstreamApp
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


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, or a usage error saying why not (a port in use
    names the way to pick another)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name == "posix":  # elsewhere it would let two servers share a port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = " (another server there? --port N, or make dev PORT=N, picks another)"
        raise click.UsageError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc}{hint}"
        ) from None
    return sock


def serve(
    app: StepstreamApp,
    host: str,
    port: int,
    log_level: str,
    banner: Callable[[int], str],
) -> None:
    """Serve ``app`` with uvicorn on ``host``:``port``. Its lifespan (the store opened and
    migrated, in-process workers started) runs first, here: a backend that fails is one line
    and exit status 1, and ``banner(port)`` is printed only once the app is ready."""
    import uvicorn

    from stepstream.server.protocol import BoundedHttp

    sock = bind(host, port)

    signals: list[int] = []  # the stop signals received, raised again once the app is down
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=BoundedHttp,
        log_level=log_level,
        timeout_graceful_shutdown=10,
    )

    async def run() -> None:
        try:
            # Entered here, the app's own lifespan (run again by uvicorn) starts nothing twice.
            async with app.lifespan(app):
                click.echo(banner(sock.getsockname()[1]))
                await _server(config, signals).serve(sockets=[sock])
        except StepstreamError as exc:
            fail(exc)

    with sock:
        run_async(run())
    for sig in reversed(signals):  # what a stop signal does by default, now that all is down
        signal.raise_signal(sig)


def _server(config: Any, signals: list[int]) -> Any:
    """uvicorn's server, stopping on SIGINT/SIGTERM as usual but leaving it to ``serve`` to
    raise them again (into ``signals``) once the app's lifespan has stopped the workers:
    uvicorn raises them as it stops serving, which would end the process first."""
    import uvicorn

    from stepstream.realtime.channel import drain_all

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            # uvicorn waits for open responses before it stops; SSE responses would hold it
            # until max_duration. Tell them to send "reconnect" and end now.
            drain_all()
            signals.append(sig)
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            handled = (signal.SIGINT, signal.SIGTERM)
            before = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in before.items():
                    signal.signal(sig, handler)

    return Server(config)
