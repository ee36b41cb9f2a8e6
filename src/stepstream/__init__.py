"""stepstream: durable background workflows whose progress streams live to the browser.

>>> from stepstream import Realtime, handle
>>> realtime = Realtime(schema={"chat": {"message": str}})
>>> app = handle(realtime)  # an ASGI SSE endpoint
"""

from stepstream.backends.base import HistoryPolicy, Message
from stepstream.errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    CursorUnavailable,
    StepstreamError,
    ValidationError,
)
from stepstream.realtime import Channel, Realtime, handle

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "Channel",
    "ConfigurationError",
    "CursorUnavailable",
    "HistoryPolicy",
    "Message",
    "Realtime",
    "StepstreamError",
    "ValidationError",
    "__version__",
    "handle",
]
