"""Every exception a stepstream user can see.

The tree::

    StepstreamError
    ├── ValidationError        event data (or a request) does not match the schema
    ├── CursorUnavailable      a resume cursor points into history that was trimmed away
    ├── BackendError           the storage backend failed (driver errors are wrapped here)
    │   └── BackendUnavailable the backend cannot be reached
    ├── ConfigurationError     a setting (backend URL, option) is wrong
    ├── UnknownWorkflow        no workflow is registered under that name
    ├── RunNotFound            no run has that id
    ├── RunConflict            the run id is taken, or the run already finished
    ├── NoWaiters              notify found nobody waiting for the event
    ├── NonDeterminismError    a replay met a different step than the recorded one
    ├── ChildRunFailed         a run started with ``invoke`` failed or was canceled
    ├── StepFailed             a step failed for good (retries exhausted)
    └── WorkflowFailed         why a run failed (given to the failure function)

Control flow of the engine, ``BaseException``s so a user's ``except Exception`` cannot swallow
them (see ``workflow/context.py`` for the others)::

    LeaseLost                  (internal) this execution no longer holds the run

Raised by workflow code to steer retries (plain ``Exception``s, so the engine sees them):

    NonRetryableError          fail the run now, no more retries
    RetryAfterError            retry the step after ``seconds``

Driver exceptions (``redis.exceptions.*``, ``sqlite3.*``) never escape: backends translate them
into ``BackendError`` ``from`` the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class StepstreamError(Exception):
    """Base class of every stepstream error."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem found while validating data: where (``loc``) and what (``message``)."""

    loc: str
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}" if self.loc else self.message


class ValidationError(StepstreamError, ValueError):
    """Data did not match the schema; nothing was stored.

    ``errors`` lists each problem with its field path, e.g. ``stepName: Field required``.
    """

    def __init__(self, message: str, errors: Sequence[FieldError] = ()) -> None:
        self.errors = list(errors)
        detail = "; ".join(str(e) for e in self.errors)
        super().__init__(f"{message}: {detail}" if detail else message)


class CursorUnavailable(StepstreamError, LookupError):
    """A resume cursor points before the oldest event still stored (history was trimmed).

    Resuming from it would silently skip events, so stepstream refuses. Start again from the
    oldest available history (``history=True``) or accept the gap explicitly.
    """

    def __init__(self, channel: str, cursor: str) -> None:
        self.channel = channel
        self.cursor = cursor
        super().__init__(
            f"cursor {cursor} on channel {channel!r} is no longer available: events after it "
            "were trimmed from history (max_length/expire_after); resume with history=True "
            "to get everything still stored"
        )


class BackendError(StepstreamError):
    """The storage backend failed. The original driver exception is the ``__cause__``."""


class BackendUnavailable(BackendError, ConnectionError):
    """The storage backend cannot be reached (server down, file not writable)."""


class ConfigurationError(StepstreamError, ValueError):
    """A setting is wrong: an unknown backend URL scheme, an invalid option value."""


class UnknownWorkflow(StepstreamError, LookupError):
    """No workflow is registered under this name."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        listed = ", ".join(sorted(known)) or "none are registered"
        super().__init__(f"unknown workflow {name!r}; registered workflows: {listed}")


class RunNotFound(StepstreamError, LookupError):
    """No run has this id."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no workflow run {run_id!r}")


class RunConflict(StepstreamError):
    """The run id is already taken, or the run has already finished."""


class NoWaiters(StepstreamError, LookupError):
    """``notify`` found no run waiting for the event (and named no run to keep it for)."""

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        super().__init__(
            f"no run is waiting for event {event_id!r}: pass workflow_run_id= so the event is "
            "kept until that run waits for it"
        )


class NonDeterminismError(StepstreamError):
    """Replaying a run met a different step at a position than the recorded one."""


class ChildRunFailed(StepstreamError):
    """A run started with ``context.invoke`` failed or was canceled."""

    def __init__(self, run_id: str, state: str, error: str | None) -> None:
        self.run_id = run_id
        self.state = state
        self.error = error
        super().__init__(f"invoked run {run_id} ended {state}: {error or 'no error message'}")


class LeaseLost(BaseException):
    """Control flow: this execution no longer holds the run (canceled, finished, or claimed
    again by a later execution). Every write of the execution is refused from then on; the
    execution stops without recording anything more."""


class NonRetryableError(Exception):
    """Raise from a step (or workflow) to fail the run at once, without more retries."""


class RetryAfterError(Exception):
    """Raise from a step to retry it after ``seconds`` (e.g. a rate limit's Retry-After)."""

    def __init__(self, seconds: float, message: str = "") -> None:
        self.seconds = float(seconds)
        super().__init__(message or f"retry after {self.seconds:g}s")


class StepFailed(StepstreamError):
    """A step failed for good (retries exhausted, or ``NonRetryableError``). Raised where the
    workflow awaits the step, on every replay; catch it to compensate, or let it fail the run."""

    def __init__(self, step: str, message: str, attempts: int) -> None:
        self.step = step
        self.message = message
        self.attempts = attempts
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {message}")


class WorkflowFailed(StepstreamError):
    """What a ``failure_function`` receives: why the run failed (``step`` names the failing
    step, when one did)."""

    def __init__(self, message: str, step: str | None = None) -> None:
        self.message = message
        self.step = step
        super().__init__(message)
