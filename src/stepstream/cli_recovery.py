"""``stepstream cancel``, ``resume``, ``restart``, ``fork``, ``delete`` and ``waiters``: the
recovery commands of DESIGN §14, a shell over ``Client`` (``cli.py`` adds them to
``stepstream``).

Cancel and resume take run ids, or a filter (``--workflow``, ``--label``, ``--since``,
``--until``; resume also ``--state``) for the runs to act on, at most 1000 per call."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

from stepstream.cli_remote import (
    LABEL_OPTION,
    SINCE_OPTION,
    TOKEN_OPTION,
    UNTIL_OPTION,
    URL_OPTION,
    client_for,
    complain,
    fail,
    run_async,
    run_state,
)
from stepstream.console import local_time, wide_console
from stepstream.errors import StepstreamError
from stepstream.records import FAILURE_POSITIONS

if TYPE_CHECKING:
    from stepstream.client import Client
    from stepstream.server.wire import RunLog

BULK_LIMIT = 1000  # runs the server acts on per bulk call
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="print the outcome as JSON")


def _call(url: str, token: str | None, action: Callable[[Client], Awaitable[Any]]) -> Any:
    """``action(client)`` against the server; a stepstream error is printed and exits 1."""

    async def go() -> Any:
        async with client_for(url, token) as client:
            try:
                return await action(client)
            except StepstreamError as exc:
                fail(exc)

    return run_async(go())


def _each(
    url: str, token: str | None, run_ids: tuple[str, ...], action: Callable[[Client, str], Any]
) -> list[tuple[str, Any]]:
    """``await action(client, run_id)`` for each id in turn: the ids it succeeded for, each
    with what it returned. A failure's error is printed and the others still go (the command
    then exits 1: ``_finish``)."""

    async def go() -> tuple[list[tuple[str, Any]], int]:
        done: list[tuple[str, Any]] = []
        async with client_for(url, token) as client:
            for run_id in run_ids:
                try:
                    done.append((run_id, await action(client, run_id)))
                except StepstreamError as exc:
                    complain(exc)
        return done, len(run_ids) - len(done)

    done: list[tuple[str, Any]]
    done, failed = run_async(go())
    if failed and len(run_ids) > 1:
        click.echo(f"{failed} of {len(run_ids)} runs failed (see above)", err=True)
    return done


def _where(
    run_ids: tuple[str, ...], given: dict[str, Any], command: str
) -> dict[str, str | int] | None:
    """The filter the options give, ``None`` when run ids are given instead; a usage error for
    both or neither (acting on every run of the server takes at least one filter)."""
    fields = {
        "state": given.get("state"),
        "workflow": given.get("workflow"),
        "label": given.get("label"),
        "createdAfter": given.get("since"),
        "createdBefore": given.get("until"),
    }
    where = {name: value for name, value in fields.items() if value is not None}
    if run_ids and where:
        raise click.UsageError(f"give {command} run ids or filter options, not both")
    if not run_ids and not where:
        options = "--state, --workflow" if "state" in given else "--workflow"
        raise click.UsageError(
            f"give {command} one or more run ids, or filter options ({options}, --label, "
            "--since, --until) for the runs to act on"
        )
    return where or None


def _counted(verb: str, count: int, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({verb: count}))
        return
    click.echo(f"{verb} {count} run{'' if count == 1 else 's'}")
    if count >= BULK_LIMIT:
        click.echo(f"(at most {BULK_LIMIT} per call: run it again for the rest)", err=True)


def _filters(function: Callable[..., None]) -> Callable[..., None]:
    for option in (
        TOKEN_OPTION,
        URL_OPTION,
        JSON_OPTION,
        UNTIL_OPTION,
        SINCE_OPTION,
        LABEL_OPTION,
        click.option("--workflow", default=None, help="only runs of this workflow"),
    ):
        function = option(function)
    return function


@click.command()
@click.argument("run_ids", metavar="[RUN_ID]...", nargs=-1)
@_filters
def cancel(
    run_ids: tuple[str, ...], as_json: bool, url: str, token: str | None, **given: Any
) -> None:
    """End runs now as RUN_CANCELED (no failure function): the RUN_IDs, or the running runs
    the filter options match.

    \b
    stepstream cancel wfr_a wfr_b
    stepstream cancel --label batch-7 --since 2h"""
    where = _where(run_ids, given, "cancel")
    if where is not None:
        _counted("canceled", _call(url, token, lambda c: c.cancel_many(None, **where)), as_json)
        return
    done = _each(url, token, run_ids, lambda client, run_id: client.cancel(run_id))
    if as_json:
        click.echo(json.dumps({"canceled": len(done)}))
    else:
        for run_id, _ in done:
            click.echo(f"{run_id} RUN_CANCELED")
    _finish(run_ids, done)


@click.command()
@click.argument("run_ids", metavar="[RUN_ID]...", nargs=-1)
@click.option(
    "--state",
    type=click.Choice(["failed", "canceled", "RUN_FAILED", "RUN_CANCELED"], case_sensitive=False),
    callback=lambda _ctx, _param, value: run_state(value),
    default=None,
    help="only failed or only canceled runs (RUN_ prefix optional; default: both)",
)
@_filters
def resume(
    run_ids: tuple[str, ...], as_json: bool, url: str, token: str | None, **given: Any
) -> None:
    """Continue failed or canceled runs in place: completed steps are kept, the step that
    failed runs again with fresh retries. The RUN_IDs, or the runs the filter options match.

    \b
    stepstream resume wfr_a
    stepstream resume --state failed --workflow order --since 2026-01-05T09:00"""
    where = _where(run_ids, given, "resume")
    if where is not None:
        _counted("resumed", _call(url, token, lambda c: c.resume_many(None, **where)), as_json)
        return

    async def again(client: Client, run_id: str) -> str | None:
        point = _resume_point(await client.logs(run_id))
        await client.resume(run_id)
        return point

    done = _each(url, token, run_ids, again)
    if as_json:
        click.echo(json.dumps({"resumed": len(done)}))
    else:
        for run_id, step in done:
            click.echo(f"resumed {run_id}" + (f": it continues from step {step!r}" if step else ""))
    _finish(run_ids, done)


def _resume_point(log: RunLog) -> str | None:
    """The step a resumed run executes first: its first step that did not succeed (the
    failure function's steps are dropped on resume)."""
    for step in log["steps"]:
        if step["stepId"] < FAILURE_POSITIONS and step["state"] != "STEP_SUCCESS":
            return step["stepName"]
    return None


def _finish(run_ids: tuple[str, ...], done: list[tuple[str, Any]]) -> None:
    """Exit 1 if the command failed for any of ``run_ids``."""
    if len(done) < len(run_ids):
        raise SystemExit(1)


@click.command()
@click.argument("run_id")
@JSON_OPTION
@URL_OPTION
@TOKEN_OPTION
def restart(run_id: str, as_json: bool, url: str, token: str | None) -> None:
    """Start a new run with RUN_ID's workflow, payload and labels (every step executes again;
    the new run's log says it was restarted from RUN_ID)."""
    new = _call(url, token, lambda client: client.restart(run_id))
    if as_json:
        click.echo(json.dumps({"workflowRunId": new, "restartedFrom": run_id}))
    else:
        click.echo(f"restarted {run_id} as {new}")


@click.command()
@click.argument("run_id")
@click.option(
    "--from-step", "from_step", required=True, metavar="NAME", help="the first step to execute"
)
@JSON_OPTION
@URL_OPTION
@TOKEN_OPTION
def fork(run_id: str, from_step: str, as_json: bool, url: str, token: str | None) -> None:
    """Start a new run of RUN_ID whose steps before the first step named NAME are copied from
    it, not executed; NAME and the steps after it execute."""
    new = _call(url, token, lambda client: client.fork(run_id, from_step))
    if as_json:
        click.echo(json.dumps({"workflowRunId": new, "forkedFrom": run_id, "fromStep": from_step}))
    else:
        click.echo(f"forked {run_id} as {new}: steps before {from_step!r} copied, not executed")


@click.command()
@click.argument("run_id")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@URL_OPTION
@TOKEN_OPTION
def delete(run_id: str, yes: bool, url: str, token: str | None) -> None:
    """Delete finished run RUN_ID and its event history, for good (asks first unless --yes).
    A running run is refused: cancel it first."""
    log: RunLog = _call(url, token, lambda client: client.logs(run_id))
    state = log["workflowState"]
    if not yes and state != "RUN_STARTED":  # a running one: the server's refusal says why
        click.confirm(
            f"delete {run_id} ({log['workflowName']}, {state}, created "
            f"{local_time(log['workflowRunCreatedAt'])}) and its event history?",
            abort=True,
        )
    _call(url, token, lambda client: client.delete(run_id))
    click.echo(f"deleted {run_id}")


@click.command()
@click.argument("event_id")
@JSON_OPTION
@URL_OPTION
@TOKEN_OPTION
def waiters(event_id: str, as_json: bool, url: str, token: str | None) -> None:
    """List the runs waiting for event EVENT_ID now: run, step, and until when it waits."""
    found = _call(url, token, lambda client: client.waiters(event_id))
    if as_json:
        click.echo(json.dumps({"waiters": found}, indent=2))
        return
    if not found:
        click.echo(f"no run waits for {event_id!r}")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold dim")
    for column in ("run", "step", "waits until"):
        table.add_column(column, overflow="fold")  # ids cut short would be of no use
    for waiter in found:
        deadline = waiter["deadline"]
        table.add_row(
            waiter["workflowRunId"],
            waiter["stepName"],
            "no timeout" if deadline is None else local_time(deadline),
        )
    wide_console().print(table)


COMMANDS = (cancel, resume, restart, fork, delete, waiters)
