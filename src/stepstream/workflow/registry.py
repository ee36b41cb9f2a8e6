"""``Workflows``: the registry of workflow functions and their options."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from stepstream.backends import Backend, backend_from_url
from stepstream.errors import ConfigurationError, UnknownWorkflow
from stepstream.events import WorkflowUpdate
from stepstream.records import HistoryPolicy

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from stepstream.realtime.channel import Realtime
    from stepstream.workflow.client import Client
    from stepstream.workflow.context import WorkflowContext
    from stepstream.workflow.worker import Worker

WorkflowFn = Callable[["WorkflowContext"], Awaitable[Any]]
FailureFn = Callable[["WorkflowContext", BaseException], Awaitable[Any] | Any]
F = TypeVar("F", bound=WorkflowFn)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits ``initial * factor**(n-1)`` seconds,
    at most ``maximum``, times a random factor in ``[1 - jitter, 1]``.

    >>> Backoff(initial=1, factor=2, jitter=0).delay(3)
    4.0
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 300.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        return float(base * (1 - self.jitter * random.random()))


RetryDelay = Backoff | Callable[[int], float] | float


@dataclass(frozen=True, slots=True)
class Workflow:
    """A registered workflow: its function and options."""

    name: str
    fn: WorkflowFn
    retries: int
    retry_delay: RetryDelay
    failure_function: FailureFn | None
    timeout: float | None

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if isinstance(self.retry_delay, Backoff):
            return self.retry_delay.delay(attempt)
        if callable(self.retry_delay):
            return float(self.retry_delay(attempt))
        return float(self.retry_delay)


class Workflows:
    """The workflows of an application, and where their runs are stored.

    >>> workflows = Workflows()                    # runs in $STEPSTREAM_BACKEND / a local file
    >>> @workflows.workflow("hello", retries=2)
    ... async def hello(context):
    ...     return await context.run("greet", lambda: "hi")

    With ``realtime``, each run streams the built-in ``workflow.update`` progress events on the
    channel named by its run id, and runs are stored in the realtime's backend.
    ``max_result_bytes``: the largest step result or workflow return value, as JSON text (1 MiB
    by default); a larger one fails the step without retries, saying so.
    """

    def __init__(
        self,
        realtime: Realtime | None = None,
        *,
        backend: str | None = None,
        max_result_bytes: int = 1_048_576,
    ) -> None:
        if max_result_bytes < 1:
            raise ConfigurationError(f"max_result_bytes must be >= 1, got {max_result_bytes}")
        self.max_result_bytes = max_result_bytes
        self.realtime = realtime
        if realtime is not None:
            if backend is not None:
                raise ConfigurationError(
                    "give backend= to the Realtime, not to Workflows: they share one store"
                )
            self.backend: Backend = realtime.backend
            if "workflow.update" not in realtime.schema:
                realtime.schema.add("workflow.update", WorkflowUpdate)
        else:
            self.backend = backend_from_url(backend)
        self._workflows: dict[str, Workflow] = {}
        self._engine: Any = None
        self._opened = False

    @property
    def history_policy(self) -> HistoryPolicy:
        return self.realtime.history_policy if self.realtime is not None else HistoryPolicy()

    def workflow(
        self,
        name: str,
        *,
        retries: int = 3,
        retry_delay: RetryDelay | None = None,
        failure_function: FailureFn | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """Register an ``async def fn(context)`` under ``name``.

        ``retries``: how many times a failing step is retried (so ``retries + 1`` attempts).
        ``retry_delay``: a ``Backoff`` (default: 1 s doubling, jitter), seconds, or
        ``fn(attempt) -> seconds``. ``failure_function(context, error)`` runs once the run has
        failed (durably, retried like a step). ``timeout``: seconds before the run fails.
        """
        if not name or not isinstance(name, str) or "/" in name:
            raise ConfigurationError(
                f"workflow name {name!r} must be a non-empty string without '/'"
            )
        if retries < 0:
            raise ConfigurationError(f"retries must be >= 0, got {retries}")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"timeout must be positive seconds, got {timeout}")

        def register(fn: F) -> F:
            if name in self._workflows:
                raise ConfigurationError(f"workflow {name!r} is registered twice")
            self._workflows[name] = Workflow(
                name, fn, retries, retry_delay or Backoff(), failure_function, timeout
            )
            return fn

        return register

    def get(self, name: str) -> Workflow:
        try:
            return self._workflows[name]
        except KeyError:
            raise UnknownWorkflow(name, list(self._workflows)) from None

    @property
    def names(self) -> list[str]:
        return sorted(self._workflows)

    # -- runtime ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store (the realtime's, if any). Idempotent."""
        if self.realtime is not None:
            await self.realtime.open()
        elif not self._opened:
            await self.backend.open()
        self._opened = True

    async def aclose(self) -> None:
        if self.realtime is not None:
            await self.realtime.aclose()
        else:
            await self.backend.close()
        self._opened = False

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from stepstream.workflow.engine import Engine

            self._engine = Engine(self)
        return self._engine

    def client(self) -> Client:
        """An in-process ``Client`` for this registry."""
        from stepstream.workflow.client import Client

        return Client(self)

    def worker(self, **options: Any) -> Worker:
        """A ``Worker`` executing this registry's runs in this process."""
        from stepstream.workflow.worker import Worker

        return Worker(self, **options)

    def asgi(self, **options: Any) -> Starlette:
        """The stepstream ASGI app for this registry (API, SSE, dashboard; in-process workers
        unless ``workers=0``)."""
        from stepstream.server.app import workflows_app

        return workflows_app(self, **options)
