"""`GET /v1/projects/{project}/sse`: one subscriber's session over Server-Sent Events.

The session is the WebSocket one (ws_endpoint.py): register (live events queue up),
`welcome`, then replay or `gap` + `snapshot`, then live. Each event is one block
`id: <epoch>:<seq>` / `event: <type>` / `data: <event frame JSON>`; control messages are
`event: welcome|replayed|gap|snapshot|error`, and those that move the stream's position
carry an `id` too, so `Last-Event-ID` always says where to resume. Wherever the WebSocket
path would close (queue overflow 4008, drain 1001, ...) the stream sends `event: error`
with the close code and ends; the client resumes with `Last-Event-ID` (or since+epoch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .auth import Principal, authorize
from .backends.base import StoredEvent
from .connection import Connection
from .core import Hub
from .errors import BadRequest, HubError
from .limits import ConnectionSlot, admit_connection
from .protocol import GapFrame, ReplayedFrame, WelcomeFrame, encode
from .session import open_connection, start_stream
from .subscription import SubscriptionParams, parse_since, parse_subscription

__all__ = [
    "SseSink",
    "format_control",
    "format_event",
    "parse_last_event_id",
    "sse_endpoint",
    "sse_frames",
]

logger = logging.getLogger("hub.sse")

HEADERS = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # nginx: do not buffer the stream
}
KEEPALIVE = b": keepalive\n\n"
CLOSE_GRACE_S = 5.0  # an ended stream that cannot take its error block in this long is cut


# --- framing (pure) ----------------------------------------------------------------------


def parse_last_event_id(raw: str) -> tuple[int | None, str | None]:
    """`<epoch>:<seq>` (or a bare `<seq>`) -> (since, epoch); empty -> (None, None)."""
    raw = raw.strip()
    if not raw:
        return None, None
    epoch, sep, seq = raw.rpartition(":")
    if not seq or (sep and (not epoch or len(epoch) > 64 or not epoch.isprintable())):
        raise BadRequest("invalid Last-Event-ID: expected <epoch>:<seq>")
    return parse_since(seq, "Last-Event-ID seq"), (epoch or None)


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


class _Head(msgspec.Struct):
    op: str
    seq: int = 0
    type: str = ""


_head_decoder = msgspec.json.Decoder(_Head)
_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])


def sse_frames(payload: bytes, epoch: bytes) -> bytes:
    """SSE blocks for an encoded frame or array of frames (the slow, general path)."""
    raws = _list_decoder.decode(payload) if payload.lstrip()[:1] == b"[" else [payload]
    blocks = []
    for raw in raws:
        frame = bytes(raw)
        head = _head_decoder.decode(frame)
        if head.op == "event":
            blocks.append(
                b"id: %s:%d\nevent: %s\n%s\n"
                % (epoch, head.seq, head.type.encode(), _data_lines(frame))
            )
        else:
            blocks.append(format_control(head.op, frame))
    return b"".join(blocks)


# --- the sink: a writer task that drains the connection's queue --------------------------


class SseSink:
    """A non-direct sink: the fan-out queues events, this writer frames them one by one."""

    direct = False

    def __init__(self, send: Send, heartbeat_s: float, chunk_bytes: int) -> None:
        self._send = send
        self._heartbeat_s = heartbeat_s
        self._chunk_bytes = chunk_bytes  # per write: a cut socket keeps its last write
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._last_block: bytes | None = None  # set by end(): the error block, then the end
        self._task: asyncio.Task[None] | None = None
        self._last_write = asyncio.get_running_loop().time()
        self.finished = asyncio.Event()  # the stream has ended (or must be cut)
        self.epoch = b""

    def writable(self) -> bool:
        return False

    def write(self, payload: bytes, frame: bytes | None = None) -> None:
        raise RuntimeError("SseSink is not direct")

    def notify(self) -> None:
        self._wake.set()

    async def send(self, payload: bytes) -> None:
        await self.send_blocks(sse_frames(payload, self.epoch))

    async def send_blocks(self, blocks: bytes) -> None:
        async with self._lock:
            await self._send({"type": "http.response.body", "body": blocks, "more_body": True})
            self._last_write = asyncio.get_running_loop().time()

    def end(self, frame: bytes, code: int, reason: str) -> None:
        # The stream ends now: its connection and slot are released at once. The writer
        # gets the error block out in `stop()` unless the socket stays congested (a send
        # waiting for it to drain may wait forever: the peer may never read).
        self._last_block = format_control("error", frame)
        self._wake.set()
        self.finished.set()

    def start(self, connection: Connection) -> None:
        self._task = asyncio.create_task(self._write_loop(connection), name="hub-sse-writer")

    async def stop(self) -> None:
        """Give an ending stream CLOSE_GRACE_S to send its error block; else cut it."""
        task = self._task
        if task is None:
            return
        if self._last_block is not None:
            await asyncio.wait([task], timeout=CLOSE_GRACE_S)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _write_loop(self, connection: Connection) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                idle_for = self._last_write + self._heartbeat_s - loop.time()
                if idle_for > 0 and not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(idle_for):
                            await self._wake.wait()
                self._wake.clear()
                sent = False
                while self._last_block is None and (blocks := self._next_blocks(connection)):
                    await self.send_blocks(blocks)
                    sent = True
                if self._last_block is not None:
                    await self.send_blocks(self._last_block)
                    async with self._lock:
                        await self._send({"type": "http.response.body", "body": b""})
                    return
                if not sent and loop.time() - self._last_write >= self._heartbeat_s:
                    await self.send_blocks(KEEPALIVE)
        except Exception:  # the client went away; the session sees the disconnect too
            logger.debug("sse writer stopped", exc_info=True)
        finally:
            self.finished.set()

    def _next_blocks(self, connection: Connection) -> bytes:
        """The next write: one queued control frame, or queued events up to a chunk."""
        control = connection.take_control()
        if control is not None:
            here = None if control.position is None else b"%s:%d" % (self.epoch, control.position)
            return format_control(control.op, control.frame, here)
        if not connection.live:
            return b""
        epoch = self.epoch
        events = connection.take_events(self._chunk_bytes)
        return b"".join(format_event(epoch, e) for e in events)


# --- the endpoint and its session ---------------------------------------------------------


async def sse_endpoint(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    settings = hub.settings
    params = parse_subscription(request.path_params["project"], request.query_params, settings)
    last_event_id = request.headers.get("last-event-id")
    if last_event_id is not None and last_event_id.strip():
        # It wins over since/epoch: EventSource sends it on its own reconnects.
        since, epoch = parse_last_event_id(last_event_id)
        params = msgspec.structs.replace(params, since=since, epoch=epoch)
    # The same checks as the WebSocket path: the grant (401/403), then a connection slot (503).
    principal = authorize(request, params.project, "subscribe")
    slot = admit_connection(request, principal)
    return _SseStream(hub, params, principal, slot)


class _SseStream(Response):
    """The streaming response: runs the session until the stream ends or the client leaves."""

    def __init__(
        self, hub: Hub, params: SubscriptionParams, principal: Principal, slot: ConnectionSlot
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(HEADERS)
        self._hub = hub
        self._params = params
        self._principal = principal
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream(receive, send)
        finally:
            self._slot.release()

    async def _stream(self, receive: Receive, send: Send) -> None:
        hub, params, settings = self._hub, self._params, self._hub.settings
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        sink = SseSink(send, settings.heartbeat_s, settings.max_frame_bytes)
        connection, expiry = open_connection(hub, params, self._principal, sink)
        await hub.manager.add(connection)
        hub.stats.sse_connections += 1
        sink.start(connection)
        session = asyncio.create_task(_run_session(hub, connection, sink, params))
        disconnect = asyncio.create_task(_wait_for_disconnect(receive))
        # The stream may end while the session still waits for the socket (replaying).
        finished = asyncio.create_task(sink.finished.wait())
        tasks = (session, disconnect, finished)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if expiry is not None:
                expiry.cancel()
            connection.closed = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            hub.stats.sse_connections -= 1
            await hub.manager.remove(connection)
            self._slot.release()  # now, even while the error block waits for the socket
            await sink.stop()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _run_session(
    hub: Hub, connection: Connection, sink: SseSink, params: SubscriptionParams
) -> None:
    try:
        await start_stream(hub, connection, params, _SseStreamWriter(sink))
    except HubError as exc:  # e.g. the backend went away while replaying
        connection.close(exc.close_code, exc.code, exc.message, retryable=exc.retryable)
    await sink.finished.wait()


class _SseStreamWriter:
    """Session framing for SSE: control messages that move the position carry an `id`."""

    def __init__(self, sink: SseSink) -> None:
        self._sink = sink

    def _id(self, seq: int) -> bytes:
        return b"%s:%d" % (self._sink.epoch, seq)

    async def welcome(self, frame: WelcomeFrame, at_head: bool) -> None:
        self._sink.epoch = frame.epoch.encode()
        # Live only: the stream stands at head, so a resume from the welcome's id loses nothing.
        here = self._id(frame.head) if at_head else None
        await self._sink.send_blocks(format_control("welcome", encode(frame), here))

    async def events(self, events: list[StoredEvent]) -> None:
        epoch = self._sink.epoch
        await self._sink.send_blocks(b"".join(format_event(epoch, e) for e in events))

    async def replayed(self, frame: ReplayedFrame) -> None:
        block = format_control("replayed", encode(frame), self._id(frame.head))
        await self._sink.send_blocks(block)

    async def gap(self, frame: GapFrame) -> None:
        await self._sink.send_blocks(format_control("gap", encode(frame)))
