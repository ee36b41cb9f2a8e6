"""SSE frames in the three dialects of one endpoint (DESIGN §6, ``docs/sse-protocol.md``):
``v0`` (@upstash/realtime 0.3.x), ``v1`` (@upstash/realtime 1.x) and ``native`` (1.x frames plus
an ``id:`` line on every user event, ``gap`` events)."""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import quote

from stepstream.clock import system_ms
from stepstream.realtime.stream import Connected, Gap, Item
from stepstream.records import Message

Dialect = Literal["v0", "v1", "native"]


class Encoder:
    """Turns stream items into SSE frames of one dialect. User-event frames are cached on the
    message, so a broadcast encodes each event once per dialect, not once per connection."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        # What this client has received, per channel: its Last-Event-ID if it drops now.
        self.sent: dict[str, str] = {}
        self._quoted: dict[str, str] = {}

    def encode_all(self, items: list[Item]) -> bytes:
        if len(items) == 1:  # the common case of a live broadcast
            return self.encode(items[0])
        return b"".join([self.encode(item) for item in items])

    def encode(self, item: Item) -> bytes:
        if isinstance(item, Message):
            return self.user(item)
        if isinstance(item, Connected):
            self.sent[item.channel] = item.cursor
            frame = self.system(
                {"type": "connected", "channel": item.channel, "cursor": item.cursor}
            )
            return self._id_line() + frame if self.dialect == "native" else frame
        if isinstance(item, Gap):
            if self.dialect == "native":
                event = {"type": "gap", "channel": item.channel, "cursor": item.cursor}
            else:
                event = {"type": "error"}
            message = (
                f"events after cursor {item.cursor} on channel {item.channel!r} were trimmed "
                "from history; replaying what remains"
            )
            key = "message" if self.dialect == "native" else "error"
            return self.system({**event, key: message})
        raise TypeError(f"cannot encode {item!r}")

    def user(self, message: Message) -> bytes:
        frames = message.frames
        frame = frames.get(self.dialect)
        if frame is None:
            frame = frames[self.dialect] = user_frame(self.dialect, message)
        if self.dialect == "native":
            self.sent[message.channel] = message.id
            if len(self.sent) == 1:
                # One channel: the id line is the same for every such connection, so a
                # broadcast builds the whole frame once.
                whole = frames.get("native-1")
                if whole is None:
                    whole = frames["native-1"] = self._id_line() + frame
                return whole
            return self._id_line() + frame
        return frame

    def _id_line(self) -> bytes:
        quoted = self._quoted
        parts = []
        for channel, cursor in self.sent.items():
            name = quoted.get(channel)
            if name is None:
                name = quoted[channel] = quote(channel, safe="")
            parts.append(f"{name}={cursor}")
        return f"id: {'&'.join(parts)}\n".encode()

    def system(self, event: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"

    def reconnect(self) -> bytes:
        return self.system({"type": "reconnect", "timestamp": system_ms()})


def user_frame(dialect: Dialect, message: Message) -> bytes:
    """The ``data:`` frame of a user event (its data spliced in as stored JSON text)."""
    channel = json.dumps(message.channel)
    if dialect == "v0":
        path = json.dumps(message.event.split("."), separators=(",", ":"))
        body = (
            f'{{"data":{message.raw},"__event_path":{path},"__stream_id":"{message.id}",'
            f'"__channel":{channel}}}'
        )
    else:
        body = (
            f'{{"id":"{message.id}","event":"{message.event}","channel":{channel},'
            f'"data":{message.raw}}}'
        )
    return b"data: " + body.encode() + b"\n\n"
