"""Every exception a stepstream user can see, and how each one travels over HTTP.

The tree, with each error's wire ``code`` and HTTP ``status``::

    StepstreamError            error                   500  the base class
    ├── ValidationError        validation_error        422  data does not match the schema
    │   ├── BadRequest         bad_request             400  a wrong query parameter or header
    │   └── MalformedJSON      malformed_json          400  a request body is not JSON
    ├── BodyTooLarge           payload_too_large       413  a request body is over the limit
    ├── BodyTooSlow            request_timeout         408  a request body took too long
    ├── ClientDisconnected     client_disconnected     400  the client left mid-body
    ├── UnsupportedMediaType   unsupported_media_type  415  a body not sent as JSON
    ├── Unauthorized           unauthorized            401  no valid API or subscription token
    │   └── InvalidToken                                    a bad subscription token
    ├── Forbidden              forbidden               403  the token does not grant that
    │   ├── ForbiddenHost      forbidden_host          403  the Host is not served here
    │   └── CrossOrigin        cross_origin            403  a write from another site's page
    ├── RouteNotFound          not_found               404  no route for that path
    ├── MethodNotAllowed       method_not_allowed      405  the route takes other methods
    ├── UnknownWorkflow        unknown_workflow        404  no workflow by that name
    ├── RunNotFound            run_not_found           404  no run has that id
    ├── NoWaiters              no_waiters              404  notify found nobody waiting
    ├── RunConflict            conflict                409  the id is taken, or the run finished
    ├── CursorUnavailable      cursor_unavailable      410  a cursor's successors were trimmed
    ├── BackendError           backend_unavailable     503  the storage backend failed
    │   └── BackendUnavailable                              it cannot be reached (what a
    │                                                       remote 503 comes back as)
    ├── AppNotStarted          app_not_started         503  mounted, but its lifespan never ran
    ├── ConfigurationError     configuration_error     500  a setting is wrong
    ├── NonDeterminismError    non_determinism         500  a replay met a different step
    ├── RunFailed              run_failed              500  a run failed or was canceled
    │   └── ChildRunFailed     child_run_failed        500  one started by ``invoke``
    ├── StepFailed             step_failed             500  a step failed for good
    ├── WorkflowFailed         workflow_failed         500  why a run failed (for the
    │                                                       failure function)
    └── RunStuck               run_stuck               500  a test's run can never finish
                                                            (defined in ``stepstream.testing``)

A subclass without a code of its own (``InvalidToken``, ``BackendUnavailable``) answers with its
parent's and comes back from the wire as the parent, except ``backend_unavailable``, which
comes back as ``BackendUnavailable`` (still a ``BackendError``).

On the wire an error is ``{"error": {"code", "message"}}`` (DESIGN §5), built by
``error_body`` and read back by ``error_from_body`` (the JSON API, the SSE endpoint, the app's
middleware and the remote clients all use this pair). A request carrying the
``Stepstream-Error-Detail`` header (stepstream's own clients send it) also gets
``"detail"``: the arguments of the error's constructor (``RunNotFound``'s ``run_id``,
``UnknownWorkflow``'s ``name`` and ``known``...), so the client raises the very error the server
did, built by its constructor.

Control flow of the engine, ``BaseException``s so a user's ``except Exception`` cannot swallow
them (see ``workflow/runtime.py`` for the others)::

    LeaseLost                  (internal) this execution no longer holds the run

Raised by workflow code to steer retries (plain ``Exception``s, so the engine sees them)::

    NonRetryableError          fail the run now, no more retries
    RetryAfterError            retry the step after ``seconds``

Driver exceptions (``redis.exceptions.*``, ``sqlite3.*``) never escape: backends translate them
into ``BackendError`` ``from`` the original.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NotRequired, TypedDict

# The request header asking for the ``detail`` of an error body (any value).
DETAIL_HEADER = "stepstream-error-detail"


class ErrorFields(TypedDict):
    code: str
    message: str
    detail: NotRequired[dict[str, Any]]


class ErrorBody(TypedDict):
    """Every error answer of the HTTP API: ``{"error": {"code", "message"}}``."""

    error: ErrorFields


class StepstreamError(Exception):
    """Base class of every stepstream error.

    Each class states how it travels over HTTP: its wire ``code``, its HTTP ``status``, the
    ``headers`` its answer carries, and ``fields``: the constructor arguments, kept as
    attributes of the same names, that rebuild it (none: it is rebuilt from its message).
    """

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500
    headers: ClassVar[Mapping[str, str]] = {}
    fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            if cls.code in ERROR_CODES:
                raise TypeError(f"{cls.__name__}: code {cls.code!r} is taken")
            ERROR_CODES[cls.code] = cls

    def detail(self) -> dict[str, Any]:
        """The constructor's arguments, as JSON: ``type(self).rebuild`` takes them back."""
        return {name: getattr(self, name) for name in self.fields}

    @classmethod
    def rebuild(cls, message: str, detail: Mapping[str, Any]) -> StepstreamError:
        """The error a server answered with, from its message and ``detail``."""
        if not cls.fields:
            return cls(message)
        return cls(**{name: detail[name] for name in cls.fields})


ERROR_CODES: dict[str, type[StepstreamError]] = {"error": StepstreamError}


def error_body(error: StepstreamError, *, detail: bool = False) -> ErrorBody:
    """``error`` as the HTTP API answers it; with ``detail``, what rebuilds it too.

    >>> error_body(RunNotFound("wfr_x"))
    {'error': {'code': 'run_not_found', 'message': "no workflow run 'wfr_x'"}}
    """
    fields = ErrorFields(code=error.code, message=str(error))
    if detail and error.fields:
        fields["detail"] = error.detail()
    return ErrorBody(error=fields)


def error_from_body(body: object, status: int) -> StepstreamError:
    """The error a stepstream server answered with (``body``: the parsed JSON, or the text of
    an answer that is not JSON), rebuilt by its class's constructor.

    An unknown code, or a body without the ``detail`` the class needs, gives a plain
    ``StepstreamError`` with the message; an answer that is not stepstream's (a proxy's 502)
    a ``BackendUnavailable`` for 502-504, else a ``StepstreamError``.

    >>> error = error_from_body(error_body(RunNotFound("wfr_x"), detail=True), 404)
    >>> type(error).__name__, error.run_id
    ('RunNotFound', 'wfr_x')
    """
    fields = body.get("error") if isinstance(body, dict) else None
    if not (
        isinstance(fields, dict)
        and isinstance(fields.get("code"), str)
        and isinstance(fields.get("message"), str)
    ):
        kind = BackendUnavailable if status in {502, 503, 504} else StepstreamError
        return kind(f"HTTP {status}: {str(body)[:200]}")
    message: str = fields["message"]
    detail = fields.get("detail")
    cls = ERROR_CODES.get(fields["code"], StepstreamError)
    try:
        return cls.rebuild(message, detail if isinstance(detail, dict) else {})
    except (KeyError, TypeError, ValueError):
        return StepstreamError(message)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem found while validating data: where (``loc``) and what (``message``)."""

    loc: str
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}" if self.loc else self.message


# -- the request was wrong ----------------------------------------------------------------------


class ValidationError(StepstreamError, ValueError):
    """Data did not match the schema; nothing was stored. ``errors`` lists each problem with
    its field path, e.g. ``stepName: Field required``."""

    code = "validation_error"
    status = 422
    fields: ClassVar[tuple[str, ...]] = ("message", "errors")

    def __init__(self, message: str, errors: Sequence[FieldError | Mapping[str, str]] = ()) -> None:
        self.message = message
        self.errors = [e if isinstance(e, FieldError) else FieldError(**e) for e in errors]
        detail = "; ".join(str(e) for e in self.errors)
        super().__init__(f"{message}: {detail}" if detail else message)

    def detail(self) -> dict[str, Any]:
        detail = super().detail()
        if "errors" in detail:
            detail["errors"] = [{"loc": e.loc, "message": e.message} for e in self.errors]
        return detail


class BadRequest(ValidationError):
    """A request's query parameter, channel name or header is wrong (the message says which)."""

    code = "bad_request"
    status = 400
    fields = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)


class MalformedJSON(ValidationError):
    """A request body is not JSON (or nests too deeply to parse)."""

    code = "malformed_json"
    status = 400
    fields = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)


class BodyTooLarge(StepstreamError):
    """A request body is over the app's ``max_body`` bytes. Not a ``ValueError``: it is raised
    while a route reads the body, where ``except ValueError`` means "not JSON"."""

    code = "payload_too_large"
    status = 413
    fields = ("limit",)

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the request body is over the {limit}-byte limit")


class BodyTooSlow(StepstreamError):
    """A request body did not arrive within ``seconds`` (the connection is not kept)."""

    code = "request_timeout"
    status = 408
    headers = {"connection": "close"}
    fields = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the request body did not arrive within {seconds:g} s")


class ClientDisconnected(StepstreamError):
    """The client went away before its request body was complete."""

    code = "client_disconnected"
    status = 400


class UnsupportedMediaType(StepstreamError):
    """A write's body is not sent as JSON (``Content-Type: application/json``)."""

    code = "unsupported_media_type"
    status = 415


class Unauthorized(StepstreamError):
    """No valid token: the API token as a bearer header, or a subscription token."""

    code = "unauthorized"
    status = 401
    headers = {"www-authenticate": "Bearer"}


class InvalidToken(Unauthorized):
    """A subscription token is malformed, tampered with, or expired."""


class Forbidden(StepstreamError):
    """The request is authenticated but may not do this (a channel the token does not grant,
    a ``middleware`` refusal)."""

    code = "forbidden"
    status = 403


class ForbiddenHost(Forbidden):
    """The ``Host`` is not one the app serves (without a token: loopback names only)."""

    code = "forbidden_host"


class CrossOrigin(Forbidden):
    """A write (POST...) from another site's page, whose origin is not in ``cors_origins``."""

    code = "cross_origin"


class RouteNotFound(StepstreamError, LookupError):
    """No route answers this path."""

    code = "not_found"
    status = 404


class MethodNotAllowed(StepstreamError):
    """The route exists but takes other methods."""

    code = "method_not_allowed"
    status = 405


# -- what the request names does not exist, or is in the wrong state ----------------------------


class UnknownWorkflow(StepstreamError, LookupError):
    """No workflow is registered under this name."""

    code = "unknown_workflow"
    status = 404
    fields = ("name", "known")

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = sorted(known)
        listed = ", ".join(self.known) or "none are registered"
        super().__init__(f"unknown workflow {name!r}; registered workflows: {listed}")


class RunNotFound(StepstreamError, LookupError):
    """No run has this id."""

    code = "run_not_found"
    status = 404
    fields = ("run_id",)

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no workflow run {run_id!r}")


class NoWaiters(StepstreamError, LookupError):
    """``notify`` found no run waiting for the event (and named no run to keep it for)."""

    code = "no_waiters"
    status = 404
    fields = ("event_id",)

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        super().__init__(
            f"no run is waiting for event {event_id!r}: name its run (--run, workflowRunId=, "
            "workflow_run_id=) and it is kept until that run waits for it"
        )


class RunConflict(StepstreamError):
    """The run id is already taken, or the run has already finished."""

    code = "conflict"
    status = 409


class CursorUnavailable(StepstreamError, LookupError):
    """A resume cursor points before the oldest event still stored (history was trimmed).

    Resuming from it would silently skip events, so stepstream refuses. Start again from the
    oldest available history (``history=True``) or accept the gap explicitly.
    """

    code = "cursor_unavailable"
    status = 410
    fields = ("channel", "cursor")

    def __init__(self, channel: str, cursor: str) -> None:
        self.channel = channel
        self.cursor = cursor
        super().__init__(
            f"cursor {cursor} on channel {channel!r} is no longer available: events after it "
            "were trimmed from history (max_length/expire_after); resume with history=True "
            "to get everything still stored"
        )


# -- the server side failed ---------------------------------------------------------------------


class BackendError(StepstreamError):
    """The storage backend failed. The original driver exception is the ``__cause__``."""

    code = "backend_unavailable"
    status = 503


class BackendUnavailable(BackendError, ConnectionError):
    """The storage backend cannot be reached (server down, file not writable)."""


# A server's 503 comes back as the narrower class: it is a ``BackendError`` too, and a caller
# catching ``BackendUnavailable`` (or ``ConnectionError``) around a remote call keeps working.
ERROR_CODES[BackendError.code] = BackendUnavailable


class AppNotStarted(StepstreamError):
    """The stepstream app answers a request while its lifespan has not run: it was mounted in
    another app (whose lifespan does not run a mounted app's) without being started by it, so
    its store is closed and no worker would ever execute a run."""

    code = "app_not_started"
    status = 503

    def __init__(
        self,
        message: str = (
            "the stepstream app's lifespan has not run (it is mounted in another app, which "
            "does not run a mounted app's lifespan), so no worker would run what you trigger: "
            "start it from the host app with FastAPI(lifespan=stepstream_app.lifespan) or "
            "Starlette(lifespan=stepstream_app.lifespan), or with `async with "
            "stepstream_app.lifespan(app):` inside your own lifespan (README: Embedding in "
            "FastAPI or Starlette)"
        ),
    ) -> None:
        super().__init__(message)


class ConfigurationError(StepstreamError, ValueError):
    """A setting is wrong: an unknown backend URL scheme, an invalid option value."""

    code = "configuration_error"


# -- how a workflow ended -----------------------------------------------------------------------


class NonDeterminismError(StepstreamError):
    """Replaying a run met a different step at a position than the recorded one."""

    code = "non_determinism"


class RunFailed(StepstreamError):
    """``Client.result``: the run ended ``state`` (``RUN_FAILED``, ``RUN_CANCELED``)."""

    code = "run_failed"
    fields = ("run_id", "state", "error")
    what = "run"

    def __init__(self, run_id: str, state: str, error: str | None) -> None:
        self.run_id = run_id
        self.state = state
        self.error = error
        super().__init__(f"{self.what} {run_id} ended {state}: {error or 'no error message'}")


class ChildRunFailed(RunFailed):
    """A run started with ``context.invoke`` failed or was canceled."""

    code = "child_run_failed"
    what = "invoked run"


class StepFailed(StepstreamError):
    """A step failed for good (retries exhausted, or ``NonRetryableError``). Raised where the
    workflow awaits the step, on every replay; catch it to compensate, or let it fail the run."""

    code = "step_failed"
    fields = ("step", "message", "attempts")

    def __init__(self, step: str, message: str, attempts: int) -> None:
        self.step = step
        self.message = message
        self.attempts = attempts
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {message}")


class WorkflowFailed(StepstreamError):
    """What a ``failure_function`` receives: why the run failed (``step`` names the failing
    step, when one did)."""

    code = "workflow_failed"
    fields = ("message", "step")

    def __init__(self, message: str, step: str | None = None) -> None:
        self.message = message
        self.step = step
        super().__init__(message)


# -- not errors: control flow, and what workflow code raises ------------------------------------


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
