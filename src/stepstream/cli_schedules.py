"""``stepstream schedules`` and ``stepstream workflows``: list, create, pause, resume and delete
schedules; list workflows, pause and resume them. A shell over ``Client`` (``cli.py`` adds
these commands to ``stepstream``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

from stepstream.cli_remote import (
    DATA_HELP,
    TOKEN_OPTION,
    URL_OPTION,
    client_for,
    fail,
    json_data,
    run_async,
)
from stepstream.console import local_time, wide_console
from stepstream.errors import StepstreamError

if TYPE_CHECKING:
    from stepstream.client import Client
    from stepstream.server.wire import ScheduleInfo


def _call(ctx: click.Context, /, action: Callable[[Client], Awaitable[Any]]) -> Any:
    """``action(client)`` against the server the command names (its own ``--url``/``--token``,
    else its group's); a stepstream error is printed and exits 1."""
    group = ctx.parent.params if ctx.parent is not None else {}
    url = ctx.params.get("url") or group["url"]
    token = ctx.params.get("token") or group.get("token")

    async def go() -> Any:
        async with client_for(url, token) as client:
            try:
                return await action(client)
            except StepstreamError as exc:
                fail(exc)

    return run_async(go())


def _at(ms: int | None) -> str:
    return "-" if ms is None else local_time(ms)


def _not_started(error: str | None) -> str:
    from rich.markup import escape

    return "-" if error is None else f"[red]not started: {escape(error)}[/]"


def print_schedules(items: list[ScheduleInfo]) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold dim")
    for column in ("id", "workflow", "cron", "timezone", "state", "next run", "last run"):
        table.add_column(column, overflow="fold")  # ids cut short would be of no use
    for item in items:
        state = "[yellow]paused[/]" if item["paused"] else "[green]active[/]"
        table.add_row(
            item["id"],
            item["workflow"],
            item["cron"],
            item["timezone"],
            state,
            _at(item["nextRunAt"]),
            item["lastRunId"] or _not_started(item.get("lastError")),
        )
    wide_console().print(table)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print the list as JSON")
@URL_OPTION
@TOKEN_OPTION
@click.pass_context
def schedules(ctx: click.Context, /, as_json: bool, url: str, token: str | None) -> None:
    """List schedules (id, workflow, cron, time zone, next run, last run); the subcommands
    create, pause, resume and delete them."""
    if ctx.invoked_subcommand is not None:
        return
    found = _call(ctx, lambda client: client.schedules())
    if as_json:
        click.echo(json.dumps({"schedules": found}, indent=2))
    else:
        print_schedules(found)


def _remote(function: Callable[..., None]) -> Callable[..., None]:
    """``--url`` and ``--token`` on a subcommand too (its group's are used when not given)."""
    function = click.option("--token", default=None, help="API bearer token")(function)
    function = click.option("--url", default=None, help="the stepstream server")(function)
    return function


@schedules.command("create")
@click.argument("schedule_id", metavar="ID")
@click.argument("workflow")
@click.argument("cron")
@click.option("--timezone", default="UTC", show_default=True, help="IANA name: Europe/Berlin")
@click.option("--data", default=None, help=f"each run's payload: {DATA_HELP}")
@_remote
@click.pass_context
def create(
    ctx: click.Context,
    /,
    schedule_id: str,
    workflow: str,
    cron: str,
    timezone: str,
    data: str | None,
    url: str | None,
    token: str | None,
) -> None:
    """Start WORKFLOW on each tick of CRON (5 fields, or 6 with leading seconds; quote it)."""
    payload = json_data(data)
    made = _call(
        ctx,
        lambda client: client.create_schedule(
            schedule_id, workflow, cron, timezone=timezone, payload=payload
        ),
    )
    click.echo(f"{made['id']} created; next run {_at(made['nextRunAt'])}")


@schedules.command("pause")
@click.argument("schedule_id", metavar="ID")
@_remote
@click.pass_context
def pause(ctx: click.Context, /, schedule_id: str, url: str | None, token: str | None) -> None:
    """Start no more runs of schedule ID until it is resumed."""
    _call(ctx, lambda client: client.pause_schedule(schedule_id))
    click.echo(f"{schedule_id} paused")


@schedules.command("resume")
@click.argument("schedule_id", metavar="ID")
@_remote
@click.pass_context
def resume(ctx: click.Context, /, schedule_id: str, url: str | None, token: str | None) -> None:
    """Start runs of schedule ID again, from its next tick."""
    info = _call(ctx, lambda client: client.resume_schedule(schedule_id))
    click.echo(f"{schedule_id} resumed; next run {_at(info['nextRunAt'])}")


@schedules.command("delete")
@click.argument("schedule_id", metavar="ID")
@_remote
@click.pass_context
def delete(ctx: click.Context, /, schedule_id: str, url: str | None, token: str | None) -> None:
    """Delete schedule ID (one a workflow declares comes back when a worker starts)."""
    _call(ctx, lambda client: client.delete_schedule(schedule_id))
    click.echo(f"{schedule_id} deleted")


@click.group("workflows", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print the list as JSON")
@URL_OPTION
@TOKEN_OPTION
@click.pass_context
def workflows_command(ctx: click.Context, /, as_json: bool, url: str, token: str | None) -> None:
    """List the server's workflows and which are paused; the subcommands pause and resume
    one (a paused workflow's runs are accepted, and wait)."""
    if ctx.invoked_subcommand is not None:
        return
    found = _call(ctx, lambda client: client.workflows())
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for name in found["workflows"]:
        click.echo(f"{name}  paused" if name in found["paused"] else name)


@workflows_command.command("pause")
@click.argument("name")
@_remote
@click.pass_context
def pause_workflow(ctx: click.Context, /, name: str, url: str | None, token: str | None) -> None:
    """Stop executing workflow NAME's runs (triggers are still accepted)."""
    _call(ctx, lambda client: client.pause_workflow(name))
    click.echo(f"{name} paused")


@workflows_command.command("resume")
@click.argument("name")
@_remote
@click.pass_context
def resume_workflow(ctx: click.Context, /, name: str, url: str | None, token: str | None) -> None:
    """Execute workflow NAME's runs again."""
    _call(ctx, lambda client: client.resume_workflow(name))
    click.echo(f"{name} resumed")
