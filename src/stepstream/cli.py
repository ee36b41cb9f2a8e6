"""The ``stepstream`` command: a thin shell over the public API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from stepstream import events
from stepstream.backends import DEFAULT_URL
from stepstream.backends.base import shown_url
from stepstream.cli_recovery import COMMANDS as RECOVERY_COMMANDS
from stepstream.cli_remote import (
    DATA_HELP,
    LABEL_OPTION,
    SINCE_OPTION,
    TOKEN_OPTION,
    UNTIL_OPTION,
    URL_OPTION,
    json_data,
    run_state,
)
from stepstream.cli_remote import client_for as _client
from stepstream.cli_remote import fail as _fail
from stepstream.cli_remote import run_async as _run
from stepstream.cli_schedules import schedules, workflows_command
from stepstream.cli_serve import PORT, address, load_workflows
from stepstream.cli_serve import serve as _serve
from stepstream.errors import CursorUnavailable, StepstreamError
from stepstream.records import RunState
from stepstream.version import __version__

if TYPE_CHECKING:
    from stepstream.server.wire import RunLog, RunPage


@click.group()
@click.version_option(__version__, prog_name="stepstream")
def main() -> None:
    """Durable background workflows whose progress streams live to the browser."""


BACKEND_HELP = (
    "sqlite:///file.db (default), redis://host:6379/0 or postgresql://user@host/db; "
    "sets STEPSTREAM_BACKEND"
)


def _app_options(function: Callable[..., None]) -> Callable[..., None]:
    function = click.option(
        "--insecure",
        is_flag=True,
        help="serve a non-loopback address without STEPSTREAM_TOKEN (anyone reaching it may "
        "trigger, cancel and read runs)",
    )(function)
    function = click.option("--log-level", default="info", show_default=True)(function)
    function = click.option("--port", default=8000, show_default=True, type=PORT)(function)
    function = click.option("--host", default="127.0.0.1", show_default=True)(function)
    function = click.option("--backend", help=BACKEND_HELP)(function)
    return function


def _exposure(host: str, insecure: bool) -> dict[str, Any]:
    """The app options for serving on ``host``; a usage error for a non-loopback address
    without ``STEPSTREAM_TOKEN``, unless ``insecure``."""
    from stepstream.auth import TOKEN_ENV, is_loopback

    if os.environ.get(TOKEN_ENV):
        return {}
    if not insecure:
        if is_loopback(host):
            return {}
        raise click.UsageError(
            f"refusing to serve {host} without a token: anyone who can reach it could trigger, "
            f"cancel and read runs. Set {TOKEN_ENV}=<a long random secret> (clients send it as "
            "Authorization: Bearer), or pass --insecure to serve it open anyway."
        )
    click.echo(
        f"warning: --insecure: serving {host} with no token, under any Host name: anyone who "
        "can reach it may trigger, cancel and read runs",
        err=True,
    )
    return {"allowed_hosts": ["*"]}


LEASE_HELP = "seconds a claimed run is held: a dead worker's runs resume after it"
lease_option = click.option(
    "--lease", default=15.0, type=click.FloatRange(min=0.3), show_default=True, help=LEASE_HELP
)
retention_option = click.option(
    "--retention",
    type=click.FloatRange(min=1),
    default=None,
    help="delete finished runs older than this many seconds, with their channel history "
    "(default: $STEPSTREAM_RETENTION, else keep every run)",
)


@main.command()
@click.argument("app", required=False)
@_app_options
@lease_option
@retention_option
def dev(
    app: str | None,
    backend: str | None,
    host: str,
    port: int,
    log_level: str,
    insecure: bool,
    lease: float,
    retention: float | None,
) -> None:
    """API, SSE, dashboard and in-process workers in one process (embedded SQLite default).

    With no APP, serves the built-in examples: basic, failing, approval, parallel,
    one-per-user (flow control)."""
    exposure = _exposure(host, insecure)
    workflows = load_workflows(app or "stepstream.examples:workflows", backend, retention)
    where = backend or os.environ.get("STEPSTREAM_BACKEND") or DEFAULT_URL

    def banner(bound: int) -> str:
        return (
            f"stepstream dev: workflows {', '.join(workflows.names)}; "
            f"open {address(host, bound)}  (backend: {shown_url(where)}; Ctrl-C stops)"
        )

    served = workflows.asgi(workers=1, lease=lease, **exposure)
    _serve(served, host, port, log_level, banner)


@main.command()
@click.argument("app")
@_app_options
@click.option("--workers", default=0, show_default=True, help="in-process workers (0: none)")
@lease_option
@retention_option
def server(
    app: str,
    backend: str | None,
    host: str,
    port: int,
    log_level: str,
    insecure: bool,
    workers: int,
    lease: float,
    retention: float | None,
) -> None:
    """API + SSE + dashboard, stateless: run several behind a load balancer.

    A non-loopback --host needs STEPSTREAM_TOKEN (or --insecure)."""
    exposure = _exposure(host, insecure)
    workflows = load_workflows(app, backend, retention)
    where = shown_url(workflows.backend.url)
    served = workflows.asgi(workers=workers, lease=lease, **exposure)
    _serve(
        served,
        host,
        port,
        log_level,
        lambda bound: (
            f"stepstream server: {address(host, bound)}  (backend: {where}; Ctrl-C stops)"
        ),
    )


@main.command()
@click.argument("app")
@click.option("--backend", help=BACKEND_HELP)
@click.option("--concurrency", default=100, show_default=True, help="runs executed at once")
@lease_option
@retention_option
def worker(
    app: str, backend: str | None, concurrency: int, lease: float, retention: float | None
) -> None:
    """Execute runs (no HTTP). SIGTERM/SIGINT: stop claiming, finish or release what is held."""
    workflows = load_workflows(app, backend, retention)

    async def run() -> None:
        pool = workflows.worker(concurrency=concurrency, lease=lease)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await pool.start()
        click.echo(
            f"stepstream worker {pool.owner}: {', '.join(workflows.names)}  "
            f"(backend: {shown_url(workflows.backend.url)}; Ctrl-C stops)",
            err=True,
        )
        try:
            await stop.wait()
        finally:
            await pool.stop(grace=lease / 2)
            await workflows.aclose()

    try:
        _run(run())
    except StepstreamError as exc:  # the backend does not answer, say
        _fail(exc)


@main.command()
@click.argument("name")
@click.option("--data", default=None, help=f"the request payload: {DATA_HELP}")
@click.option("--id", "run_id", default=None, help="choose the run id (gets the wfr_ prefix)")
@click.option("--delay", type=float, default=None, help="start after this many seconds")
@click.option("--label", "labels", multiple=True, help="a name to find the run by (repeatable)")
@click.option("--follow", is_flag=True, help="show live step progress until the run ends")
@URL_OPTION
@TOKEN_OPTION
def trigger(
    name: str,
    data: str | None,
    run_id: str | None,
    delay: float | None,
    labels: tuple[str, ...],
    follow: bool,
    url: str,
    token: str | None,
) -> None:
    """Start a run of workflow NAME. With --follow, exit 0 on success and 1 on failure (130
    on Ctrl-C: the run goes on without you)."""
    body = json_data(data)
    started: list[str] = []

    async def go() -> int:
        client = _client(url, token)
        try:
            started.append(
                await client.trigger(name, body, workflow_run_id=run_id, delay=delay, labels=labels)
            )
        except StepstreamError as exc:
            _fail(exc)
        finally:
            await client.aclose()
        if not follow:
            click.echo(started[0])
            return 0
        from stepstream.console_follow import follow_run

        return await follow_run(url, started[0], token)

    try:
        sys.exit(_run(go()))
    except KeyboardInterrupt:
        if not started:
            raise
        click.echo(
            f"\nstopped following; run {started[0]} goes on. Look again with: stepstream logs "
            f"{started[0]}  (or stepstream tail {started[0]} --history)",
            err=True,
        )
        sys.exit(130)


@main.command()
@click.argument("event_id")
@click.option("--data", default=None, help=f"the event's data: {DATA_HELP}")
@click.option("--run", "run_id", default=None, help="only this run (kept for it if it waits later)")
@URL_OPTION
@TOKEN_OPTION
def notify(
    event_id: str, data: str | None, run_id: str | None, url: str, token: str | None
) -> None:
    """Send event EVENT_ID to the runs waiting for it; prints how many were waiting."""
    body = json_data(data)

    async def go() -> int:
        async with _client(url, token) as client:
            try:
                return await client.notify(event_id, body, workflow_run_id=run_id)
            except StepstreamError as exc:
                _fail(exc)
                raise

    click.echo(_run(go()))


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="print the log as JSON")
@URL_OPTION
@TOKEN_OPTION
def logs(run_id: str, as_json: bool, url: str, token: str | None) -> None:
    """Show a run's log: state, payload, result and a table of its steps."""

    async def go() -> RunLog:
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
@click.option(
    "--state",
    type=click.Choice(
        [
            *(s.value for s in RunState),
            *(s.value.removeprefix("RUN_") for s in RunState),
            "running",
        ],
        case_sensitive=False,
    ),
    callback=lambda _ctx, _param, value: run_state(value),
    default=None,
    help="started (or running), success, failed or canceled (RUN_ prefix optional)",
)
@click.option("--workflow", default=None)
@LABEL_OPTION
@SINCE_OPTION
@UNTIL_OPTION
@click.option("--count", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@URL_OPTION
@TOKEN_OPTION
def runs(
    state: str | None,
    workflow: str | None,
    label: str | None,
    since: int | None,
    until: int | None,
    count: int,
    as_json: bool,
    url: str,
    token: str | None,
) -> None:
    """List runs, newest first (each filter given narrows them)."""

    async def go() -> RunPage:
        client = _client(url, token)
        try:
            return await client.runs(
                state=state,
                workflow=workflow,
                label=label,
                created_after=since,
                created_before=until,
                count=count,
            )
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
    """Print a channel's events as they arrive, one JSON object per line (Ctrl-C to stop). A
    run's channel (its id) ends after the run's ``runFinish``; an unknown run is an error."""
    from stepstream.realtime.remote import latest_cursor, subscribe_remote

    async def go() -> None:
        endpoint = url.rstrip("/") + "/api/realtime"
        after: dict[str, str] = {}
        try:
            if channel.startswith("wfr_"):
                state = await _tail_start(url, channel, token, history, after)
                if state is not None:  # ended before the command: its events are all past
                    why = (
                        "its channel holds no event (expired, or the app's Workflows has no "
                        "Realtime): `stepstream logs` shows its steps"
                        if history
                        else "--history prints its events"
                    )
                    click.echo(f"run {channel} has ended ({state}): {why}", err=True)
                    return

            def on_gap(gapped: str, cursor: str) -> None:
                # Nothing was stored when tail looked (``0-0``): a gap right there is only
                # events that had expired before, and tail prints from then on.
                if cursor != "0-0" or after.get(gapped) != "0-0":
                    _warn_gap(gapped, cursor)

            async for message in subscribe_remote(
                endpoint, [channel], history=history, token=token, on_gap=on_gap, after=after
            ):
                line = {"id": message.id, "event": message.event, "data": message.data}
                click.echo(json.dumps(line), nl=True)
                # The run's last event, unless it was resumed since: then more follow.
                if events.ran_to_end(channel, message.event, message.data) and (
                    await latest_cursor(url, channel, token) == message.id
                ):
                    return
        except StepstreamError as exc:
            _fail(exc)

    with contextlib.suppress(KeyboardInterrupt):
        _run(go())


async def _tail_start(
    url: str, channel: str, token: str | None, history: bool, after: dict[str, str]
) -> str | None:
    """For ``tail`` of a run: its state if it ended before the command (nothing to follow;
    with ``history``, nothing to print either); else ``None``, with ``after`` holding where its
    live events start (without history).

    The cursor is read before the state that decides, so a run ending after the cursor has
    its runFinish (and every event since) after it, whenever it ends."""
    from stepstream.realtime.remote import history_page, latest_cursor

    async with _client(url, token) as client:
        state = (await client.logs(channel))["workflowState"]  # or RunNotFound, or a refusal
        if history and state != RunState.STARTED:
            # No runFinish would ever come to end it: say so rather than wait for ever.
            empty = await latest_cursor(url, channel, token) == "0-0"
            return str(state) if empty else None
        if history or state != RunState.STARTED:
            return None if history else str(state)
        cursor = await latest_cursor(url, channel, token)
        state = (await client.logs(channel))["workflowState"]
    after[channel] = cursor
    if state == RunState.STARTED:
        return None
    try:  # it ended meanwhile: what it did since the cursor is still to print
        newer = await history_page(url, channel, token, after=cursor)
    except CursorUnavailable:
        newer = [{}]
    return None if newer else str(state)


def _warn_gap(channel: str, cursor: str) -> None:
    click.echo(
        f"warning: events of {channel!r} after {cursor} were trimmed from history before they "
        "could be delivered; going on with what remains",
        err=True,
    )


for command in (*RECOVERY_COMMANDS, schedules, workflows_command):
    main.add_command(command)

if __name__ == "__main__":
    main()
