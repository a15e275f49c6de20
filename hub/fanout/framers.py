"""Framers: typed outbound messages to the bytes one transport sends.

WebSocket: one JSON object per control message, events as one array frame. SSE: one block
per message (`id: <epoch>:<seq>` / `event: <op or type>` / `data: <frame JSON>`); control
messages that move the stream's position carry an `id` too, so `Last-Event-ID` always says
where to resume. The SSE framer learns the epoch from the `welcome` it frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..backends.base import StoredEvent
from ..protocol import WelcomeFrame, encode, encode_batch
from .outbound import Control, Outbound

__all__ = [
    "Framer",
    "SseFramer",
    "WebSocketFramer",
    "format_control",
    "format_event",
    "frame",
]


class Framer(Protocol):
    keepalive: bytes | None  # sent after a quiet heartbeat interval, if the transport has one

    def control(self, control: Control) -> bytes: ...
    def events(self, events: Sequence[StoredEvent]) -> bytes: ...


def frame(framer: Framer, item: Outbound) -> bytes:
    """The bytes of one outbound item: a control message or a batch of events."""
    if isinstance(item, Control):
        return framer.control(item)
    return framer.events(item)


class WebSocketFramer:
    keepalive: bytes | None = None  # the server pings at the WebSocket layer (uvicorn)

    def control(self, control: Control) -> bytes:
        return encode(control.message)

    def events(self, events: Sequence[StoredEvent]) -> bytes:
        return encode_batch([e.frame for e in events])


class SseFramer:
    keepalive: bytes | None = b": keepalive\n\n"  # a comment: proxies keep the stream open

    def __init__(self) -> None:
        self.epoch = b""

    def control(self, control: Control) -> bytes:
        message = control.message
        if isinstance(message, WelcomeFrame):
            self.epoch = message.epoch.encode()
        here = None if control.position is None else b"%s:%d" % (self.epoch, control.position)
        op: str = type(message).__struct_config__.tag  # type: ignore[assignment]
        return format_control(op, encode(message), here)

    def events(self, events: Sequence[StoredEvent]) -> bytes:
        epoch = self.epoch
        return b"".join(format_event(epoch, e) for e in events)


def _data_lines(payload: bytes) -> bytes:
    # JSON from msgspec is one line, but a published `data` keeps the publisher's whitespace.
    if b"\n" not in payload and b"\r" not in payload:
        return b"data: " + payload + b"\n"
    return b"".join(b"data: " + line + b"\n" for line in payload.splitlines())


def format_event(epoch: bytes, event: StoredEvent) -> bytes:
    return b"id: %s:%d\nevent: %s\n%s\n" % (
        epoch,
        event.seq,
        event.type.encode(),
        _data_lines(event.frame),
    )


def format_control(op: str, payload: bytes, event_id: bytes | None = None) -> bytes:
    head = b"id: %s\n" % event_id if event_id is not None else b""
    return b"%sevent: %s\n%s\n" % (head, op.encode(), _data_lines(payload))
