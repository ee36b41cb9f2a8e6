"""The registry: workflow definitions and their options, nothing else.

Where runs are stored and who executes them is composed on top of it, in
``stepstream.workflows.Workflows``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from stepstream.errors import ConfigurationError, UnknownWorkflow, ValidationError
from stepstream.workflow.cron import Schedule, check_schedule_id
from stepstream.workflow.flow import FlowControl
from stepstream.workflow.policy import Backoff, RetryDelay, RetryPolicy

if TYPE_CHECKING:
    from stepstream.workflow.context import WorkflowContext

WorkflowFn = Callable[["WorkflowContext"], Awaitable[Any]]
FailureFn = Callable[["WorkflowContext", BaseException], Awaitable[Any] | Any]
F = TypeVar("F", bound=WorkflowFn)


@dataclass(frozen=True, slots=True)
class Workflow:
    """A registered workflow: its function and options."""

    name: str
    fn: WorkflowFn
    retries: int
    retry_delay: RetryDelay
    failure_function: FailureFn | None
    timeout: float | None
    flow_control: FlowControl | None = None
    schedule: Schedule | None = None
    example: Any = None
    internal: bool = False  # started by stepstream itself only (the Upstash gateway's)

    @property
    def policy(self) -> RetryPolicy:
        """How its failing steps (and its failure function) are retried."""
        return RetryPolicy(self.retries, self.retry_delay)


class Registry:
    """Workflow definitions by name, registered with ``@registry.workflow(name, ...)``.

    >>> registry = Registry()
    >>> @registry.workflow("hello", retries=2)
    ... async def hello(context):
    ...     return await context.run("greet", lambda: "hi")
    >>> registry.names
    ['hello']
    """

    def __init__(self) -> None:
        self._workflows: dict[str, Workflow] = {}

    def workflow(
        self,
        name: str,
        *,
        retries: int = 3,
        retry_delay: RetryDelay | None = None,
        failure_function: FailureFn | None = None,
        timeout: float | None = None,
        flow_control: FlowControl | None = None,
        schedule: str | Schedule | None = None,
        example: Any = None,
        internal: bool = False,
    ) -> Callable[[F], F]:
        """Register an ``async def fn(context)`` under ``name``.

        ``retries``: how many times a failing step is retried (so ``retries + 1`` attempts).
        ``retry_delay``: a ``Backoff`` (default: 1 s doubling, jitter), seconds, or
        ``fn(attempt) -> seconds``. ``failure_function(context, error)`` runs once the run has
        failed (durably, retried like a step). ``timeout``: seconds before the run fails.
        ``flow_control``: keyed parallelism and rate limits on its steps (``FlowControl``).
        ``schedule``: start runs by themselves, on a cron expression (5 fields, or 6 with
        leading seconds) or a ``Schedule`` (cron, time zone, payload); stored as the schedule
        named like the workflow when a worker starts. ``example``: a payload to start it with,
        offered by the dashboard's "New run" form (JSON). ``internal``: started by stepstream
        itself only (the Upstash gateway's built-ins): not listed, not triggered over the API.
        """
        if not name or not isinstance(name, str) or "/" in name:
            raise ConfigurationError(
                f"workflow name {name!r} must be a non-empty string without '/'"
            )
        if retries < 0:
            raise ConfigurationError(f"retries must be >= 0, got {retries}")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"timeout must be positive seconds, got {timeout}")
        if flow_control is not None and not isinstance(flow_control, FlowControl):
            raise ConfigurationError("flow_control must be a stepstream.FlowControl")
        when = _schedule(name, schedule)
        if when is not None and flow_control is not None:
            try:
                flow_control.limits(when.payload, name)
            except ValidationError as exc:
                raise ConfigurationError(f"the schedule of workflow {name!r}: {exc}") from None
        try:
            json.dumps(example, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"example of workflow {name!r} is not JSON: {exc}") from None

        def register(fn: F) -> F:
            if name in self._workflows:
                raise ConfigurationError(f"workflow {name!r} is registered twice")
            _check_async(name, fn)
            options = (retries, retry_delay or Backoff(), failure_function, timeout, flow_control)
            self._workflows[name] = Workflow(name, fn, *options, when, example, internal)
            return fn

        return register

    def get(self, name: str) -> Workflow:
        try:
            return self._workflows[name]
        except KeyError:
            raise UnknownWorkflow(name, list(self._workflows)) from None

    def find(self, name: str) -> Workflow | None:
        """The workflow registered as ``name``, or ``None``."""
        return self._workflows.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._workflows)


def _check_async(name: str, fn: object) -> None:
    """Refuse an async generator as a workflow (it yields, and no result could be stored). A
    plain ``def`` cannot be judged here: a wrapper may return another function's coroutine;
    one that returns something else fails its runs saying a workflow is an ``async def``."""
    if inspect.isasyncgenfunction(inspect.unwrap(fn) if callable(fn) else fn):
        raise ConfigurationError(
            f"workflow {name!r} is an async generator (it yields): a workflow is an async def "
            "fn(context) that returns its result"
        )


def _schedule(name: str, schedule: str | Schedule | None) -> Schedule | None:
    """A workflow's declared schedule; its id is the workflow's name."""
    if schedule is None:
        return None
    if isinstance(schedule, str):
        schedule = Schedule(cron=schedule)
    if not isinstance(schedule, Schedule):
        raise ConfigurationError(
            "schedule must be a cron expression ('0 9 * * 1-5') or a stepstream.Schedule"
        )
    try:
        check_schedule_id(name)
    except ConfigurationError as exc:
        raise ConfigurationError(f"workflow {name!r} cannot declare a schedule: {exc}") from None
    return schedule
