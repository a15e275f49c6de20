"""The subscription stream both transports share (WebSocket and SSE).

Register the connection (live events queue up), `welcome`, then replay from `since` or
`gap` + `snapshot`, then go live with the queued events above what was sent. Every message
goes to the connection's sink typed (outbound.py); the sink's framer makes the bytes.
Snapshot pages go through the connection's bounded queue (`Connection.send_paced`).
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle

from ..auth import Principal, schedule_expiry
from ..backends.base import StoredEvent
from ..core import Hub
from ..errors import ReplayOverrun
from ..limits import ConnectionSlot
from ..protocol import CloseCode, GapFrame, ReplayedFrame, WelcomeFrame, resume_plan
from ..wire.subscription import SubscriptionParams
from .connection import AnySink, Connection
from .outbound import Control, Outbound, page_size, snapshot_pages

__all__ = ["ReplayOverrun", "register_subscriber", "release_subscriber", "start_stream"]


def register_subscriber(
    hub: Hub, params: SubscriptionParams, principal: Principal, sink: AnySink
) -> tuple[Connection, TimerHandle | None]:
    """A Connection for this subscription, and the timer that closes it when its token expires."""
    settings = hub.settings
    connection = Connection(
        params.project,
        sink,
        principal.type_filter(params.types),
        key_filter=principal.key_filter(params.keys),
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


async def release_subscriber(
    hub: Hub, connection: Connection, expiry: TimerHandle | None, slot: ConnectionSlot
) -> None:
    """Unregister the connection and give its slot back at once, then stop its sink (a pull
    sink may wait a grace period for its last error to reach a congested socket)."""
    if expiry is not None:
        expiry.cancel()
    connection.closed = True
    await hub.manager.remove(connection)
    slot.release()
    await connection.sink.stop()


async def start_stream(hub: Hub, connection: Connection, params: SubscriptionParams) -> None:
    """Everything between registration and live (the connection is already registered).

    A socket that takes nothing for `stall_timeout_s` meanwhile is cut with 4008: its queue
    cannot overflow while nothing is published, so without this it would be held forever.
    """
    timeout_s = hub.settings.stall_timeout_s
    try:
        await _stream(hub, connection, params, _StallGuard(connection, timeout_s))
    except _Stalled:
        connection.close_slow(f"nothing taken within {timeout_s:g}s; reconnect with since")


async def _stream(
    hub: Hub, connection: Connection, params: SubscriptionParams, out: _StallGuard
) -> None:
    backend = hub.backend
    position = await backend.position(params.project)
    hub.manager.note_epoch(params.project, position.epoch)
    plan = resume_plan(params.since, params.epoch, position.epoch, position.oldest, position.head)
    welcome = WelcomeFrame(
        params.project,
        position.epoch,
        position.head,
        position.oldest,
        hub.settings.heartbeat_s,
        keys=params.keys,
    )
    # Live only: the stream stands at head, so a resume from the welcome's position loses nothing.
    await out.send(Control(welcome, position.head if plan.action == "live" else None))
    if plan.action == "live":
        connection.go_live(position.head)
        return
    if plan.action == "replay":
        replayed_up_to, count = await _replay(hub, connection, plan.since, out)
        hub.manager.stats.replays += 1
        await out.send(Control(ReplayedFrame(count, replayed_up_to), replayed_up_to))
        connection.go_live(replayed_up_to)
        return
    assert plan.reason is not None
    hub.manager.stats.gaps += 1
    await out.send(Control(GapFrame(plan.reason, plan.since, position.oldest, position.head)))
    view = await backend.snapshot_view(params.project)
    head, takes = view.position.head, connection.takes
    pages = snapshot_pages(
        head,
        (e.frame for e in view.events if takes(e)),
        hub.settings.max_frame_bytes,
        truncated=view.truncated,
    )
    for page in pages:
        control = Control(page, None if page.more else head, page_size(page))
        await connection.send_paced(control, hub.settings.stall_timeout_s)
        if connection.closed:
            return
        await asyncio.sleep(0)  # many sessions paging at once: let the others run too
    connection.go_live(head)


class _Stalled(Exception):
    """A send of the session did not complete within the stall timeout."""


class _StallGuard:
    """The connection's sink, every send of which must complete within `timeout_s`."""

    def __init__(self, connection: Connection, timeout_s: float) -> None:
        self._sink = connection.sink
        self._timeout_s = timeout_s

    async def send(self, item: Outbound) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._sink.send(item)
        except TimeoutError:
            raise _Stalled from None


async def _replay(
    hub: Hub, connection: Connection, since: int, out: _StallGuard
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
            if not connection.takes(event):
                continue
            batch.append(event)
            size += len(event.frame)
            if size >= settings.max_frame_bytes:
                await out.send(batch)
                count += len(batch)
                batch, size = [], 0
        if batch:
            await out.send(batch)
            count += len(batch)
        if events:
            cursor = events[-1].seq
        if len(events) < chunk:
            break
    return cursor, count
