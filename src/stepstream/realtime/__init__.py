"""Typed pub/sub with history: ``Realtime``, its channels, and the SSE endpoint."""

from stepstream.backends.base import HistoryPolicy, Message
from stepstream.realtime.channel import Channel, Realtime
from stepstream.realtime.sse import handle

__all__ = ["Channel", "HistoryPolicy", "Message", "Realtime", "handle"]
