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


def bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address ``host`` names (``localhost``: 127.0.0.1 and ::1, as
    asyncio's ``create_server`` would), on one port (``0``: the first free one), or a usage
    error saying why not (a port in use names the way to pick another)."""
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise click.UsageError(f"cannot serve on {host}:{port}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    for family, kind, proto, _, address in dict.fromkeys(found):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:  # a family this machine does not have (IPv6 off, say): as asyncio does
            continue
        sockets.append(sock)
        if os.name == "posix":  # elsewhere it would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if len(sockets) > 1:  # the port the first one got
            address = (address[0], sockets[0].getsockname()[1], *address[2:])
        try:
            sock.bind(address)
        except OSError as exc:
            for made in sockets:
                made.close()
            hint = ""
            if exc.errno == errno.EADDRINUSE:
                hint = " (another server there? --port N, or make dev PORT=N, picks another)"
            raise click.UsageError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc}{hint}"
            ) from None
    if not sockets:
        raise click.UsageError(f"cannot serve on {host}:{port}: no address this machine can use")
    return sockets


def address(host: str, port: int) -> str:
    """``http://host:port/``, an IPv6 address in brackets."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


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

    sockets = bind(host, port)

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
                for sock in sockets:  # before the banner: a client it sends is never refused
                    sock.listen(config.backlog)
                click.echo(banner(sockets[0].getsockname()[1]))
                await _server(config, signals).serve(sockets=sockets)
        except StepstreamError as exc:
            fail(exc)

    with contextlib.ExitStack() as stack:
        for sock in sockets:
            stack.enter_context(sock)
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
