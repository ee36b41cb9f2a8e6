"""Every exception a stepstream user can see.

The tree::

    StepstreamError
    ├── ValidationError        event data (or a request) does not match the schema
    ├── CursorUnavailable      a resume cursor points into history that was trimmed away
    ├── BackendError           the storage backend failed (driver errors are wrapped here)
    │   └── BackendUnavailable the backend cannot be reached
    └── ConfigurationError     a setting (backend URL, option) is wrong

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
