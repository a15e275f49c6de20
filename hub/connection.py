"""One subscriber: its type filter, its bounded outbound queue and where its stream stands.

The fan-out path calls `deliver()` synchronously for every connection of a group. The fast
case writes a frame shared by the whole group straight to the socket; anything else (socket
congested, replay still running, events already replayed) queues events here, bounded by
count and bytes. Overflow closes the connection with 4008: the client resumes with `since`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .backends.base import StoredEvent
from .protocol import CloseCode, ErrorFrame, close_reason, encode, encode_batch
from .stats import ManagerStats
from .topics import TypeFilter
from .uvicorn_ws import DirectChannel, text_frame

__all__ = ["AsgiSink", "Connection", "DirectSink", "Sink"]

logger = logging.getLogger("hub.connection")


class Sink(Protocol):
    """Where a connection's frames go."""

    direct: bool  # True when write() may be called synchronously from the fan-out path

    def writable(self) -> bool: ...
    def write(self, payload: bytes, frame: bytes | None = None) -> None: ...
    async def send(self, payload: bytes) -> None: ...
    def close(self, code: int, reason: str) -> None: ...
    def start(self, connection: Connection) -> None: ...
    async def stop(self) -> None: ...


class DirectSink:
    """Non-blocking writes through hub.uvicorn_ws (the fast path)."""

    direct = True

    def __init__(self, channel: DirectChannel) -> None:
        self._channel = channel
        self.framed = channel.framed

    def writable(self) -> bool:
        return self._channel.writable()

    def write(self, payload: bytes, frame: bytes | None = None) -> None:
        if frame is not None and self.framed:
            self._channel.write_frame(frame)
        else:
            self._channel.write_text(payload)

    async def send(self, payload: bytes) -> None:
        if not self._channel.open():
            return
        await self._channel.wait_writable()
        if self._channel.open():
            self._channel.write_text(payload)

    def close(self, code: int, reason: str) -> None:
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
        "closed",
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
        self.queued_bytes = 0
        self.slow_closes = 0
        self.user = user
        self.stats = stats
        self._queue_events = queue_events
        self._queue_bytes = queue_bytes
        self._max_frame_bytes = max_frame_bytes

    # --- fan-out path (synchronous, never awaits) ----------------------------------------

    def deliver(self, events: Sequence[StoredEvent], payload: bytes, frame: bytes | None) -> None:
        """Offer matching `events` (ascending seq) whose encoded batch is `payload`."""
        if self.closed:
            return
        sink = self.sink
        if self.live and not self.queue and self.floor < events[0].seq and sink.writable():
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
        if len(self.queue) > self._queue_events or self.queued_bytes > self._queue_bytes:
            self.close_slow()
        elif self.live:
            self.flush()

    def flush(self) -> None:
        """Write queued events while the socket takes them (called again when it drains)."""
        if self.closed or not self.live or not self.queue:
            return
        sink = self.sink
        if not sink.direct:
            sink.notify()  # type: ignore[attr-defined]
            return
        while self.queue and sink.writable():
            batch = self._take_batch()
            sink.write(batch)

    def take_events(self) -> list[StoredEvent]:
        """Hand every queued event to a sink that frames events one by one (SSE)."""
        events, self.queue, self.queued_bytes = self.queue, [], 0
        return events

    def take_batches(self) -> list[bytes]:
        batches = []
        while self.queue:
            batches.append(self._take_batch())
        return batches

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

    def close_slow(self) -> None:
        self.slow_closes += 1
        if self.stats is not None:
            self.stats.slow_closes += 1
            self.stats.dropped += len(self.queue)
        self.close(
            CloseCode.SLOW_CONSUMER,
            "slow_consumer",
            f"outbound queue over {self._queue_events} events or {self._queue_bytes} bytes; "
            "reconnect with since",
            retryable=True,
        )

    # --- session control -----------------------------------------------------------------

    def go_live(self, replayed_up_to: int) -> None:
        """End the replay: drop queued events the replay already sent, then flush the rest."""
        if replayed_up_to > 0 and self.queue:
            kept = [e for e in self.queue if e.seq > replayed_up_to]
            self.queue = kept
            self.queued_bytes = sum(len(e.frame) for e in kept)
        self.floor = max(self.floor, replayed_up_to)
        self.live = True
        self.flush()

    def close(self, code: int, error_code: str, message: str, *, retryable: bool = False) -> None:
        """Send one error frame that says why, then the close frame; drop the queue."""
        if self.closed:
            return
        self.closed = True
        self.queue = []
        self.queued_bytes = 0
        frame = encode(
            ErrorFrame(code=error_code, message=message, retryable=retryable, close=int(code))
        )
        sink = self.sink
        if sink.direct:
            with contextlib.suppress(Exception):
                sink.write(frame, text_frame(frame))
                sink.close(int(code), message)
        else:
            task = asyncio.ensure_future(_send_then_close(sink, frame, int(code), message))
            _closing_tasks.add(task)
            task.add_done_callback(_closing_tasks.discard)


_closing_tasks: set[asyncio.Future[None]] = set()  # keeps fire-and-forget closes alive


async def _send_then_close(sink: Sink, frame: bytes, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await sink.send(frame)
    sink.close(code, reason)
