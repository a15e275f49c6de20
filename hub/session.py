"""The subscription session both transports share (WebSocket and SSE).

Register the connection (live events queue up), `welcome`, then replay from `since` or
`gap` + `snapshot`, then go live with the queued events above what was sent. Only the
framing differs between transports: each passes a StreamWriter. Snapshot pages go through
the connection's bounded queue (`Connection.send_paced`), which each transport's sink drains.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from collections.abc import Awaitable, Iterable, Iterator
from typing import Protocol

from .auth import Principal, schedule_expiry
from .backends.base import StoredEvent
from .connection import Connection, ControlFrame, Sink
from .core import Hub
from .errors import HubError
from .protocol import CloseCode, GapFrame, ReplayedFrame, WelcomeFrame, resume_plan
from .subscription import SubscriptionParams

__all__ = ["ReplayOverrun", "StreamWriter", "open_connection", "snapshot_pages", "start_stream"]


class StreamWriter(Protocol):
    """How one transport frames the session's control messages and replayed events."""

    async def welcome(self, frame: WelcomeFrame, at_head: bool) -> None: ...
    async def events(self, events: list[StoredEvent]) -> None: ...
    async def replayed(self, frame: ReplayedFrame) -> None: ...
    async def gap(self, frame: GapFrame) -> None: ...


class ReplayOverrun(HubError):
    """Retention moved past a running replay: the client resumes and is told `gap`."""

    code = "replay_overrun"
    close_code = CloseCode.SLOW_CONSUMER
    retryable = True


def open_connection(
    hub: Hub, params: SubscriptionParams, principal: Principal, sink: Sink
) -> tuple[Connection, TimerHandle | None]:
    """A Connection for this subscription, and the timer that closes it when its token expires."""
    settings = hub.settings
    connection = Connection(
        params.project,
        sink,
        principal.type_filter(params.types),
        queue_events=settings.queue_events,
        queue_bytes=settings.queue_bytes,
        max_frame_bytes=settings.max_frame_bytes,
        user=principal.subject,
    )
    expiry = schedule_expiry(
        principal,
        lambda: connection.close(
            CloseCode.UNAUTHORIZED, "unauthorized", "token expired; reconnect with a new one"
        ),
    )
    return connection, expiry


async def start_stream(
    hub: Hub, connection: Connection, params: SubscriptionParams, writer: StreamWriter
) -> None:
    """Everything between registration and live (the connection is already registered).

    A socket that takes nothing for `stall_timeout_s` meanwhile is cut with 4008: its queue
    cannot overflow while nothing is published, so without this it would be held forever.
    """
    timeout_s = hub.settings.stall_timeout_s
    try:
        await _stream(hub, connection, params, _StallGuard(writer, timeout_s))
    except _Stalled:
        connection.close_slow(f"nothing taken within {timeout_s:g}s; reconnect with since")


async def _stream(
    hub: Hub, connection: Connection, params: SubscriptionParams, writer: StreamWriter
) -> None:
    backend = hub.backend
    position = await backend.position(params.project)
    hub.manager.note_epoch(params.project, position.epoch)
    plan = resume_plan(params.since, params.epoch, position.epoch, position.oldest, position.head)
    welcome = WelcomeFrame(
        params.project, position.epoch, position.head, position.oldest, hub.settings.heartbeat_s
    )
    await writer.welcome(welcome, plan.action == "live")
    if plan.action == "live":
        connection.go_live(position.head)
        return
    if plan.action == "replay":
        replayed_up_to, count = await _replay(hub, connection, plan.since, writer)
        hub.manager.stats.replays += 1
        await writer.replayed(ReplayedFrame(count, replayed_up_to))
        connection.go_live(replayed_up_to)
        return
    assert plan.reason is not None
    hub.manager.stats.gaps += 1
    await writer.gap(GapFrame(plan.reason, plan.since, position.oldest, position.head))
    view = await backend.snapshot_view(params.project)
    head, matches = view.position.head, connection.filter.matches
    pages = snapshot_pages(
        head,
        (e.frame for e in view.events if matches(e.type)),
        hub.settings.max_frame_bytes,
        truncated=view.truncated,
    )
    for page, last in pages:
        control = ControlFrame("snapshot", page, head if last else None)
        await connection.send_paced(control, hub.settings.stall_timeout_s)
        if connection.closed:
            return
        await asyncio.sleep(0)  # many sessions paging at once: let the others run too
    connection.go_live(head)


class _Stalled(Exception):
    """A send of the session did not complete within the stall timeout."""


class _StallGuard:
    """A StreamWriter whose every send must complete within `timeout_s`."""

    def __init__(self, writer: StreamWriter, timeout_s: float) -> None:
        self._writer = writer
        self._timeout_s = timeout_s

    async def _within(self, send: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await send
        except TimeoutError:
            raise _Stalled from None

    async def welcome(self, frame: WelcomeFrame, at_head: bool) -> None:
        await self._within(self._writer.welcome(frame, at_head))

    async def events(self, events: list[StoredEvent]) -> None:
        await self._within(self._writer.events(events))

    async def replayed(self, frame: ReplayedFrame) -> None:
        await self._within(self._writer.replayed(frame))

    async def gap(self, frame: GapFrame) -> None:
        await self._within(self._writer.gap(frame))


def snapshot_pages(
    head: int, frames: Iterable[bytes], max_frame_bytes: int, *, truncated: bool = False
) -> Iterator[tuple[bytes, bool]]:
    """`snapshot` frames of at most about `max_frame_bytes` each (at least one event each),
    every one but the last marked `"more":true`, the last `"truncated":true` when the
    snapshot's bounds left keys out; yields (frame, is_last)."""
    last = _LAST_TRUNCATED if truncated else _LAST
    prefix = b'{"op":"snapshot","head":%d,"events":[' % head
    budget = max_frame_bytes - len(prefix) - len(_MORE)
    parts = [prefix]
    size = 0
    for frame in frames:
        if size and size + len(frame) + 1 > budget:
            parts[-1] = _MORE  # in place of the last comma
            yield b"".join(parts), False  # one join: concatenating copies every time
            parts, size = [prefix], 0
        parts += (frame, b",")
        size += len(frame) + 1
    if size:
        parts[-1] = last
    else:
        parts.append(last)
    yield b"".join(parts), True


_MORE = b'],"more":true}'
_LAST = b"]}"
_LAST_TRUNCATED = b'],"truncated":true}'


async def _replay(
    hub: Hub, connection: Connection, since: int, writer: StreamWriter
) -> tuple[int, int]:
    """Send retained events after `since` until none are left; return (last seq, count)."""
    backend, settings = hub.backend, hub.settings
    cursor, count = since, 0
    chunk = min(settings.history_max_limit, 1000)
    while not connection.closed:
        result = await backend.read(connection.project, cursor, chunk)
        events = result.events
        if events and events[0].seq != cursor + 1:
            raise ReplayOverrun(f"events after {cursor} were evicted during replay")
        batch: list[StoredEvent] = []
        size = 0
        for event in events:
            if not connection.filter.matches(event.type):
                continue
            batch.append(event)
            size += len(event.frame)
            if size >= settings.max_frame_bytes:
                await writer.events(batch)
                count += len(batch)
                batch, size = [], 0
        if batch:
            await writer.events(batch)
            count += len(batch)
        if events:
            cursor = events[-1].seq
        if len(events) < chunk:
            break
    return cursor, count
