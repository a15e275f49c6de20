"""One subscriber: its type filter, its bounded outbound queue and where its stream stands.

The fan-out path calls `deliver()` synchronously for every connection of a group. The fast
case writes a frame shared by the whole group straight to the socket; anything else (socket
congested, replay still running, events already replayed) queues events here, bounded by
count and bytes. Overflow closes the connection with 4008: the client resumes with `since`.
Snapshot pages take the same bounded path (`send_paced`): they queue ahead of events, and a
connection that takes none of them for a while is cut with 4008 too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from .backends.base import StoredEvent
from .direct import DirectChannel
from .frames import text_frame
from .protocol import CloseCode, ErrorFrame, close_reason, encode, encode_batch
from .stats import ManagerStats
from .topics import TypeFilter

__all__ = ["AsgiSink", "Connection", "ControlFrame", "DirectSink", "Sink"]

logger = logging.getLogger("hub.connection")


class ControlFrame(NamedTuple):
    """One encoded control frame queued ahead of events (a snapshot page)."""

    op: str
    frame: bytes
    position: int | None  # the seq the stream stands at once it is sent, if it moves it


class Sink(Protocol):
    """Where a connection's frames go."""

    direct: bool  # True when write() may be called synchronously from the fan-out path

    def writable(self) -> bool: ...
    def write(self, payload: bytes, frame: bytes | None = None) -> None: ...
    async def send(self, payload: bytes) -> None: ...
    def end(self, frame: bytes, code: int, reason: str) -> None:
        """Send this last error frame if the socket takes it, then close: never await a
        writer that a congested socket blocks."""

    def start(self, connection: Connection) -> None: ...
    async def stop(self) -> None: ...


class DirectSink:
    """Non-blocking writes through hub.uvicorn_ws (the fast path)."""

    direct = True

    def __init__(self, channel: DirectChannel) -> None:
        self._channel = channel
        self._ended = asyncio.Event()  # wakes a send waiting for a socket that was cut
        self.framed = channel.framed

    def writable(self) -> bool:
        return self._channel.writable()

    def write(self, payload: bytes, frame: bytes | None = None) -> None:
        if frame is not None and self.framed:
            self._channel.write_frame(frame)
        else:
            self._channel.write_text(payload)

    async def send(self, payload: bytes) -> None:
        channel = self._channel
        if not channel.open():
            return
        if not channel.writable():
            # A cut socket may never drain (its peer does not read): stop waiting at the cut.
            waits = [
                asyncio.ensure_future(channel.wait_writable()),
                asyncio.ensure_future(self._ended.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        if channel.open() and not self._ended.is_set():
            channel.write_text(payload)

    def end(self, frame: bytes, code: int, reason: str) -> None:
        self._ended.set()
        with contextlib.suppress(Exception):
            self.write(frame, text_frame(frame))
            self._channel.close(code, reason)

    def start(self, connection: Connection) -> None:
        self._channel.on_writable = connection.flush

    async def stop(self) -> None:
        self._channel.on_writable = None


class AsgiSink:
    """Portable fallback for ASGI servers without the extension: a writer task per socket."""

    direct = False

    def __init__(self, send: Callable[[dict[str, Any]], Any]) -> None:
        self._send = send
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing: tuple[int, str] | None = None

    def writable(self) -> bool:
        return False

    def write(self, payload: bytes, frame: bytes | None = None) -> None:
        raise RuntimeError("AsgiSink is not direct")

    async def send(self, payload: bytes) -> None:
        await self._send({"type": "websocket.send", "text": payload.decode()})

    def close(self, code: int, reason: str) -> None:
        self._closing = (code, reason)
        self._wake.set()

    def end(self, frame: bytes, code: int, reason: str) -> None:
        task = asyncio.ensure_future(_send_then_close(self, frame, code, reason))
        _closing_tasks.add(task)
        task.add_done_callback(_closing_tasks.discard)

    def start(self, connection: Connection) -> None:
        self._task = asyncio.create_task(self._write_loop(connection), name="hub-ws-writer")

    def notify(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _write_loop(self, connection: Connection) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                for payload in connection.take_batches():
                    await self.send(payload)
                if self._closing is not None:
                    code, reason = self._closing
                    await self._send(
                        {"type": "websocket.close", "code": code, "reason": close_reason(reason)}
                    )
                    return
        except Exception:  # the socket went away; the endpoint's receive loop sees it too
            logger.debug("writer stopped", exc_info=True)


class Connection:
    __slots__ = (
        "_max_frame_bytes",
        "_queue_bytes",
        "_queue_events",
        "_room",
        "closed",
        "control",
        "filter",
        "floor",
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
        sink: Sink,
        type_filter: TypeFilter,
        *,
        queue_events: int,
        queue_bytes: int,
        max_frame_bytes: int,
        user: Any = None,
        stats: ManagerStats | None = None,
    ) -> None:
        self.project = project
        self.sink = sink
        self.filter = type_filter
        self.floor = 0  # highest seq sent or queued to this connection
        self.live = False  # False while the replay runs: events are only queued
        self.closed = False
        self.queue: list[StoredEvent] = []
        self.control: list[ControlFrame] = []  # snapshot pages: written before any event
        self.queued_bytes = 0  # events and control frames
        self.slow_closes = 0
        self.user = user
        self.stats = stats
        self._queue_events = queue_events
        self._queue_bytes = queue_bytes
        self._max_frame_bytes = max_frame_bytes
        self._room: asyncio.Future[None] | None = None  # send_paced waits for the queue to drain

    # --- fan-out path (synchronous, never awaits) ----------------------------------------

    def deliver(self, events: Sequence[StoredEvent], payload: bytes, frame: bytes | None) -> None:
        """Offer matching `events` (ascending seq) whose encoded batch is `payload`."""
        if self.closed:
            return
        sink = self.sink
        if (
            self.live
            and not self.queue
            and not self.control
            and self.floor < events[0].seq
            and sink.writable()
        ):
            sink.write(payload, frame)
            self.floor = events[-1].seq
            return
        floor = self.floor
        for event in events:
            if event.seq > floor:
                self.queue.append(event)
                self.queued_bytes += len(event.frame)
                floor = event.seq
        self.floor = floor
        if self._over_bound():
            self.close_slow()
        elif self.live:
            self.flush()

    def _over_bound(self) -> bool:
        return len(self.queue) > self._queue_events or self.queued_bytes > self._queue_bytes

    def flush(self) -> None:
        """Write queued frames while the socket takes them (called again when it drains)."""
        if self.closed or not (self.control or (self.live and self.queue)):
            return
        sink = self.sink
        if not sink.direct:
            sink.notify()  # type: ignore[attr-defined]
            return
        while sink.writable():
            if self.control:
                sink.write(self._take_control().frame)
            elif self.live and self.queue:
                sink.write(self._take_batch())
            else:
                break
        self._wake_room()

    def take_control(self) -> ControlFrame | None:
        """The next queued control frame, for sinks with a writer task."""
        if not self.control:
            return None
        control = self._take_control()
        self._wake_room()
        return control

    def take_events(self, max_bytes: int) -> list[StoredEvent]:
        """Queued events up to about `max_bytes`, for a sink that frames them one by one (SSE)."""
        queue = self.queue
        size, count = 0, 0
        for event in queue:
            size += len(event.frame)
            count += 1
            if size >= max_bytes:
                break
        taken = queue[:count]
        del queue[:count]
        self.queued_bytes -= size
        self._wake_room()
        return taken

    def take_batches(self) -> list[bytes]:
        """Every queued frame: control frames first, then events once live."""
        batches = []
        while self.control:
            batches.append(self._take_control().frame)
        while self.live and self.queue:
            batches.append(self._take_batch())
        self._wake_room()
        return batches

    def _take_control(self) -> ControlFrame:
        control = self.control.pop(0)
        self.queued_bytes -= len(control.frame)
        return control

    def _take_batch(self) -> bytes:
        """Pop queued events up to max_frame_bytes and join them into one array frame."""
        queue, limit = self.queue, self._max_frame_bytes
        size, count = 0, 0
        for event in queue:
            size += len(event.frame) + 1
            count += 1
            if size >= limit:
                break
        taken = queue[:count]
        del queue[:count]
        self.queued_bytes -= size - count
        return encode_batch([e.frame for e in taken])

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

    async def send_paced(self, control: ControlFrame, timeout_s: float) -> None:
        """Queue a control frame within the queue's byte bound, waiting for the socket to take
        what is queued; a connection that takes nothing for `timeout_s` is cut with 4008."""
        size = len(control.frame)
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
            self.flush()

    def _wake_room(self) -> None:
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    def go_live(self, replayed_up_to: int) -> None:
        """End the replay: drop queued events the replay already sent, then flush the rest."""
        if replayed_up_to > 0 and self.queue:
            kept = [e for e in self.queue if e.seq > replayed_up_to]
            self.queue = kept
            self.queued_bytes = sum(len(e.frame) for e in kept) + sum(
                len(c.frame) for c in self.control
            )
        self.floor = max(self.floor, replayed_up_to)
        self.live = True
        self.flush()

    def close(self, code: int, error_code: str, message: str, *, retryable: bool = False) -> None:
        """Send one error frame that says why, then the close frame; drop the queue."""
        if self.closed:
            return
        self.closed = True
        self.queue = []
        self.control = []
        self.queued_bytes = 0
        self._wake_room()
        frame = encode(
            ErrorFrame(code=error_code, message=message, retryable=retryable, close=int(code))
        )
        self.sink.end(frame, int(code), message)


_closing_tasks: set[asyncio.Future[None]] = set()  # keeps fire-and-forget closes alive


async def _send_then_close(sink: AsgiSink, frame: bytes, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await sink.send(frame)
    sink.close(code, reason)
