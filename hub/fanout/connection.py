"""One subscriber: its filter (types, keys), its bounded outbound queue and where its stream stands.

The fan-out path calls `deliver()` synchronously for every connection of a group. The fast
case writes a frame shared by the whole group straight to the socket; anything else (socket
congested, replay still running, events already replayed) queues events here, bounded by
count and bytes. Overflow closes the connection with 4008: the client resumes with `since`.
Snapshot pages take the same bounded path (`send_paced`): they queue ahead of events, and a
connection that takes none of them for a while is cut with 4008 too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from ..backends.base import StoredEvent
from ..protocol import CloseCode, ErrorFrame
from ..stats import ManagerStats
from ..wire.keys import KeyFilter
from ..wire.topics import TypeFilter
from .outbound import Control, Outbound

__all__ = ["AnySink", "Connection", "PullSinkShape", "PushSinkShape", "Sink"]


class Sink(Protocol):
    """What a session does with a connection's socket, whatever its shape."""

    async def send(self, item: Outbound) -> None:
        """Frame and send one session message once the socket takes it."""

    def end(self, error: ErrorFrame) -> None:
        """Send this last error if the socket takes it, then close: never await a writer
        that a congested socket blocks."""

    async def stop(self) -> None: ...


class PushSinkShape(Sink, Protocol):
    """Non-blocking writes (push_sink.PushSink): the fan-out path writes while writable."""

    direct: Literal[True]

    def writable(self) -> bool: ...
    def write(self, payload: bytes, frame: bytes | None = None) -> None: ...
    def write_item(self, item: Outbound) -> None: ...
    def start(self, drain_queue: Callable[[], None]) -> None: ...


class PullSinkShape(Sink, Protocol):
    """A writer task (pull_sink.PullSink): the fan-out path queues and notifies."""

    direct: Literal[False]

    def notify(self) -> None: ...
    def start(self, connection: Connection) -> None: ...


AnySink = PushSinkShape | PullSinkShape


class Connection:
    __slots__ = (
        "_max_frame_bytes",
        "_push",
        "_queue_bytes",
        "_queue_events",
        "_room",
        "closed",
        "control",
        "filter",
        "keys",
        "last_seq_sent",
        "live",
        "project",
        "queue",
        "queued_bytes",
        "sink",
        "slow_closes",
        "stats",
        "user",
    )

    def __init__(
        self,
        project: str,
        sink: AnySink,
        type_filter: TypeFilter,
        *,
        queue_events: int,
        queue_bytes: int,
        max_frame_bytes: int,
        user: Any = None,
        stats: ManagerStats | None = None,
        key_filter: KeyFilter | None = None,
    ) -> None:
        self.project = project
        self.sink = sink
        self._push = sink if sink.direct else None  # the fan-out path's direct writes
        self.filter = type_filter
        self.keys = key_filter  # None: events of every key (and those without one)
        # The highest seq sent or queued to this connection: the replay-to-live hand-off
        # offers nothing at or below it again.
        self.last_seq_sent = 0
        self.live = False  # False while the replay runs: events are only queued
        self.closed = False
        self.queue: list[StoredEvent] = []
        self.control: list[Control] = []  # snapshot pages: written before any event
        self.queued_bytes = 0  # events and control messages
        self.slow_closes = 0
        self.user = user
        self.stats = stats
        self._queue_events = queue_events
        self._queue_bytes = queue_bytes
        self._max_frame_bytes = max_frame_bytes
        self._room: asyncio.Future[None] | None = None  # send_paced waits for the queue to drain

    def takes(self, event: StoredEvent) -> bool:
        """Whether this connection's filter passes `event` (replay and snapshot ask this)."""
        if not self.filter.matches(event.type):
            return False
        keys = self.keys
        return keys is None or keys.matches(event.key)

    def start(self) -> None:
        """Connect the sink's drain to this queue (once registered with the manager)."""
        sink = self.sink
        if sink.direct:
            sink.start(self.drain_queue)
        else:
            sink.start(self)

    # --- fan-out path (synchronous, never awaits) ----------------------------------------

    def deliver(self, events: Sequence[StoredEvent], payload: bytes, frame: bytes | None) -> None:
        """Offer matching `events` (ascending seq) whose encoded batch is `payload`."""
        if self.closed:
            return
        push = self._push
        if (
            push is not None
            and self.live
            and not self.queue
            and not self.control
            and self.last_seq_sent < events[0].seq
            and push.writable()
        ):
            push.write(payload, frame)
            self.last_seq_sent = events[-1].seq
            return
        last = self.last_seq_sent
        for event in events:
            if event.seq > last:
                self.queue.append(event)
                self.queued_bytes += len(event.frame)
                last = event.seq
        self.last_seq_sent = last
        if self._over_bound():
            self.close_slow()
        elif self.live:
            self.drain_queue()

    def _over_bound(self) -> bool:
        return len(self.queue) > self._queue_events or self.queued_bytes > self._queue_bytes

    def drain_queue(self) -> None:
        """Write queued messages while the socket takes them (a push sink calls it again
        when it drains), or wake the writer task of a pull sink."""
        if self.closed or not (self.control or (self.live and self.queue)):
            return
        sink = self.sink
        if not sink.direct:
            sink.notify()
            return
        while sink.writable() and (item := self._take(self._max_frame_bytes)):
            sink.write_item(item)
        self._wake_room()

    def take_next(self, max_bytes: int) -> Outbound | None:
        """For a writer task: the next queued control message, else (once live) queued
        events up to about `max_bytes`; None when there is nothing to send."""
        item = self._take(max_bytes)
        self._wake_room()
        return item

    def _take(self, max_bytes: int) -> Outbound | None:
        if self.control:
            control = self.control.pop(0)
            self.queued_bytes -= control.size
            return control
        if not (self.live and self.queue):
            return None
        queue = self.queue
        size, count = 0, 0
        for event in queue:
            size += len(event.frame) + 1
            count += 1
            if size >= max_bytes:
                break
        taken = queue[:count]
        del queue[:count]
        self.queued_bytes -= size - count
        return taken

    def close_slow(self, why: str = "") -> None:
        self.slow_closes += 1
        if self.stats is not None:
            self.stats.slow_closes += 1
            self.stats.dropped += len(self.queue)
        self.close(
            CloseCode.SLOW_CONSUMER,
            "slow_consumer",
            why
            or f"outbound queue over {self._queue_events} events or {self._queue_bytes} bytes; "
            "reconnect with since",
            retryable=True,
        )

    # --- session control -----------------------------------------------------------------

    async def send_paced(self, control: Control, timeout_s: float) -> None:
        """Queue a control message within the queue's byte bound, waiting for the socket to
        take what is queued; a connection that takes nothing for `timeout_s` is cut with 4008."""
        size = control.size
        while not self.closed and self.control and self.queued_bytes + size > self._queue_bytes:
            self._room = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._room
            except TimeoutError:
                self.close_slow(f"snapshot not taken within {timeout_s:g}s; reconnect with since")
            finally:
                self._room = None
        if self.closed:
            return
        self.control.append(control)
        self.queued_bytes += size
        if self._over_bound():  # live events queued meanwhile count too
            self.close_slow()
        else:
            self.drain_queue()

    def _wake_room(self) -> None:
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    def go_live(self, replayed_up_to: int) -> None:
        """End the replay: drop queued events the replay already sent, then drain the rest."""
        if replayed_up_to > 0 and self.queue:
            kept = [e for e in self.queue if e.seq > replayed_up_to]
            self.queue = kept
            self.queued_bytes = sum(len(e.frame) for e in kept) + sum(c.size for c in self.control)
        self.last_seq_sent = max(self.last_seq_sent, replayed_up_to)
        self.live = True
        self.drain_queue()

    def close(self, code: int, error_code: str, message: str, *, retryable: bool = False) -> None:
        """Send one error frame that says why, then the close frame; drop the queue."""
        if self.closed:
            return
        self.closed = True
        self.queue = []
        self.control = []
        self.queued_bytes = 0
        self._wake_room()
        self.sink.end(
            ErrorFrame(code=error_code, message=message, retryable=retryable, close=int(code))
        )
