"""The Lua scripts of the Redis backend, read from ``lua/*.lua`` (package data).

``append`` is ``append_event.lua`` + ``append.lua``. Each run script (``RUN_SCRIPTS``) is
``append_event.lua`` + ``runs.lua`` (the library) + its own file, run with ``ARGV[1]`` = the key
prefix. A run script checks everything first (fencing, existence, state), then writes the
change and appends its events, so a rejected call leaves no trace and an accepted one is
stored together with the events that report it. It returns ``{status, ...}``: ``OK``,
``LEASE`` (fenced out), ``MISSING`` (no such run), ``EXISTS`` (id taken), or ``FINISHED``
(for a change only a running run takes) or ``REFUSED`` (for one it must not be in) followed by
the run's state.

Run scripts compute most keys they touch (a run's keys from its id), so they cannot declare
them all in KEYS; Redis allows that, Dragonfly needs the script to say so, in a first line
``--!df flags=allow-undeclared-keys`` (a comment to Redis). That line must stay first, so the
libraries go in right after it.

Scripts decode no JSON: step records are edited as text (``set_field``), so no decoder can
refuse stored data half way through a script, and numbers keep the form Python wrote them in
(cjson would print ``1.7955e+12`` for an epoch-ms time). Everything Python sends is written by
``records.dumps``, which never produces an escape a strict parser rejects.
"""

from __future__ import annotations

from importlib.resources import files

RUN_SCRIPTS = (
    "migrate",
    "create_run",
    "find_runs",
    "claim_runs",
    "renew_leases",
    "save_steps",
    "release_run",
    "finish_run",
    "wait_event",
    "notify",
    "cancel_run",
    "acquire_slot",
    "release_slot",
    "resume_run",
    "delete_run",
    "list_waiters",
)


def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return (files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def script(name: str, *libraries: str) -> str:
    """``lua/<name>.lua`` with ``libraries`` in front of its body (after a ``--!`` first line)."""
    body = source(name)
    head = ""
    if body.startswith("--!"):
        first, _, body = body.partition("\n")
        head = first + "\n"
    return head + "".join(source(library) for library in libraries) + body


APPEND = script("append", "append_event")
RUNS = {name: script(name, "append_event", "runs") for name in RUN_SCRIPTS}
