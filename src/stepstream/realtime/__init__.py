"""Typed pub/sub with history: ``Realtime``, its channels, and the SSE endpoint."""

from stepstream.realtime.channel import Channel, Realtime
from stepstream.realtime.sse import handle
from stepstream.records import HistoryPolicy, Message

__all__ = ["Channel", "HistoryPolicy", "Message", "Realtime", "handle"]
