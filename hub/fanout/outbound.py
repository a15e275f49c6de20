"""What a connection sends, typed until a framer turns it into bytes.

A session's control messages (welcome, replayed, gap, snapshot pages, replies, the last
error) travel as `Control`: the frame itself, where it puts the stream (an SSE `id`), and
what it weighs in the outbound queue. Events travel as `StoredEvent`s. Only a `Framer`
(framers.py) makes bytes of them, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import msgspec

from ..backends.base import StoredEvent
from ..protocol import (
    ErrorFrame,
    GapFrame,
    PongFrame,
    ReplayedFrame,
    SubscribedFrame,
    WelcomeFrame,
)

__all__ = [
    "Control",
    "ControlMessage",
    "Outbound",
    "SnapshotPage",
    "page_size",
    "snapshot_pages",
]


class SnapshotPage(msgspec.Struct, tag_field="op", tag="snapshot", omit_defaults=True):
    """A `snapshot` frame whose events are already encoded (protocol.SnapshotFrame on the
    wire): the page is framed without decoding an event."""

    head: int
    events: list[msgspec.Raw]
    truncated: bool = False
    more: bool = False


ControlMessage = (
    WelcomeFrame
    | ReplayedFrame
    | GapFrame
    | SnapshotPage
    | SubscribedFrame
    | PongFrame
    | ErrorFrame
)


class Control(NamedTuple):
    """One control message, queued ahead of events when it goes through the queue."""

    message: ControlMessage
    position: int | None = None  # the seq the stream stands at once it is sent, if it moves it
    size: int = 0  # bytes it holds in the outbound queue (snapshot pages)


Outbound = Control | Sequence[StoredEvent]

_PAGE_OVERHEAD = len(b'{"op":"snapshot","head":,"events":[],"truncated":true}') + 20


def snapshot_pages(
    head: int, frames: Iterable[bytes], max_frame_bytes: int, *, truncated: bool = False
) -> Iterator[SnapshotPage]:
    """`snapshot` pages of at most about `max_frame_bytes` each (at least one event each),
    every one but the last marked `more`, the last `truncated` when the snapshot's bounds
    left keys out."""
    budget = max_frame_bytes - _PAGE_OVERHEAD
    events: list[msgspec.Raw] = []
    size = 0
    for frame in frames:
        if size and size + len(frame) + 1 > budget:
            yield SnapshotPage(head, events, more=True)
            events, size = [], 0
        events.append(msgspec.Raw(frame))
        size += len(frame) + 1
    yield SnapshotPage(head, events, truncated=truncated)


def page_size(page: SnapshotPage) -> int:
    """About what the page weighs once framed (the queue's byte bound counts it)."""
    return _PAGE_OVERHEAD + sum(len(e) + 1 for e in page.events)
