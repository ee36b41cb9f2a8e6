"""How a gateway run is told apart from the others in lists: by its endpoint.

Every SDK run is a run of the one built-in workflow ``upstash`` (workers claim runs by the exact
names registered with them, so a name per endpoint would need every worker to know every
endpoint). So the gateway gives each run a label, its endpoint's URL path (``/api/onboarding``;
a ``serveMany`` route is its own path), found with ``GET /api/runs?label=/api/onboarding``,
``stepstream runs --label /api/onboarding`` or the dashboard's label filter; and lists show the
run's name as ``upstash /api/onboarding`` (``run_name``, the ``displayName`` of
``GET /api/runs``). The SDK's own labels cannot hold a ``/`` (its ``Client`` refuses them), so
the two never mix; ``client.logs`` and the DLQ show the SDK's labels only (``sdk_labels``).

>>> endpoint_label("https://app.example/api/onboarding?x=1")
'/api/onboarding'
"""

from __future__ import annotations

from urllib.parse import urlsplit

from stepstream.records import RunRecord

WORKFLOW = "upstash"  # the built-in workflow every gateway run is a run of
MESSAGE = "upstash-message"  # the built-in workflow delivering a plain message (``plain.py``)
URL = "upstash-workflow-url"  # the run header holding a gateway run's endpoint URL
DESTINATION = "upstash-destination"  # the run header holding a plain message's destination
MAX_LABEL = 100  # a label's length limit (``engine.MAX_LABEL_LENGTH``)
ELLIPSIS = "…"


def endpoint_label(url: str) -> str:
    """The label naming the endpoint ``url``: its path, without query or fragment (``/`` for
    none), control characters dropped; a path over 100 characters keeps its end (where a
    ``serveMany`` route's name is), after ``…``."""
    try:
        path = urlsplit(url).path
    except ValueError:
        path = url.partition("?")[0]
    path = "".join(ch for ch in path if ord(ch) >= 32 and ord(ch) != 127) or "/"
    if len(path) > MAX_LABEL:
        path = ELLIPSIS + path[-(MAX_LABEL - len(ELLIPSIS)) :]
    return path


def run_name(run: RunRecord) -> str:
    """What lists call ``run``: ``upstash /api/onboarding`` for a gateway run (the endpoint's
    label), ``upstash-message /hook`` for a plain message; any other run's workflow name."""
    url = {WORKFLOW: URL, MESSAGE: DESTINATION}.get(run.workflow)
    if url is None or not run.headers.get(url):
        return run.workflow
    return f"{run.workflow} {endpoint_label(run.headers[url])}"


def sdk_labels(run: RunRecord) -> list[str]:
    """``run``'s labels as the SDK gave them: without the endpoint's label."""
    ours = endpoint_label(run.headers.get(URL, ""))
    return [label for label in run.labels if label != ours]
