"""The text of a failure in the user's code, as a step's log keeps it: its traceback from the
user's first frame, and where it happened."""

from __future__ import annotations

import os
import sysconfig
import traceback

MAX_TRACEBACK = 8000  # characters of one attempt's traceback
# Frames of these files called the user's step body: a traceback starts after them.
INTERNAL = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    sysconfig.get_paths()["stdlib"],
)


def user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback from the first frame of the user's code: the frames of stepstream
    and the standard library that called it (the event loop, the step thread) are dropped.
    At most ``MAX_TRACEBACK`` characters, keeping the end (where it failed)."""
    trace = traceback.TracebackException.from_exception(exc)
    frames = list(trace.stack)
    while len(frames) > 1 and frames[0].filename.startswith(INTERNAL):
        frames.pop(0)
    trace.stack = traceback.StackSummary.from_list(frames)
    text = "".join(trace.format())
    return text if len(text) <= MAX_TRACEBACK else "…" + text[-MAX_TRACEBACK:]


def where(trace: str) -> str:
    """The frames of a formatted traceback without its header line and its last line (the
    error, which the log line already says): an expected failure of the user's code is logged
    as where it happened, not as an exception of the engine."""
    lines = trace.rstrip("\n").splitlines()
    if lines and lines[0].startswith("Traceback"):
        lines = lines[1:-1]
    return "\n".join(lines)


def type_name(value: object) -> str:
    return f"a {type(value).__name__}"
