"""SSE message mode (`?named=0`): events as plain `message` events, for a bare `EventSource`.

By default every SSE event is named after its type (`event: ingest.job.updated`), which an
`EventSource` delivers only to `addEventListener("ingest.job.updated", ...)`: the `onmessage`
of every SSE tutorial receives nothing. With `named=0` each event is sent without an
`event:` line, so it arrives at `onmessage`, one event object (with its `type`) per message
and still `id: <epoch>:<seq>`, so the browser's own reconnects resume exactly. Control
messages keep their names (`welcome`, `replayed`, `gap`, `snapshot`, `error`): `onmessage`
sees events only, and a client that keeps state listens for `snapshot` to rebuild it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..backends.base import StoredEvent
from ..errors import BadRequest
from ..fanout.framers import SseFramer

__all__ = ["UnnamedEventsFramer", "format_message", "sse_framer"]

_NAMED = {"1": True, "true": True, "0": False, "false": False}


def sse_framer(query: Mapping[str, str]) -> SseFramer:
    """The framer the `named` query parameter asks for (default: events named by type)."""
    raw = query.get("named")
    if raw is None or raw == "":
        return SseFramer()
    named = _NAMED.get(raw.lower())
    if named is None:
        raise BadRequest(f"invalid named {raw[:40]!r}: expected 0 or 1 (or false, true)")
    return SseFramer() if named else UnnamedEventsFramer()


class UnnamedEventsFramer(SseFramer):
    """SseFramer whose events carry no `event:` line (the `message` type); controls as ever."""

    def events(self, events: Sequence[StoredEvent]) -> bytes:
        epoch = self.epoch
        return b"".join(format_message(epoch, e) for e in events)


def format_message(epoch: bytes, event: StoredEvent) -> bytes:
    """`id: <epoch>:<seq>` and the event object as `data:` lines (one per line it holds: a
    published `data` keeps the publisher's whitespace)."""
    frame = event.frame
    if b"\n" in frame or b"\r" in frame:  # SSE ends a line at CR, LF or CRLF: one data: each
        data = b"".join(b"data: " + line + b"\n" for line in frame.splitlines())
    else:
        data = b"data: " + frame + b"\n"
    return b"id: %s:%d\n%s\n" % (epoch, event.seq, data)
