"""uvicorn WebSocket protocol with a non-blocking send exposed to the app as an ASGI extension.

ASGI's `await send()` costs a coroutine and an await per message per connection; fan-out to
thousands of sockets is dominated by that. This subclass of uvicorn's sans-I/O protocol lets
the hub write a pre-framed message straight to the transport (as `websockets.broadcast()`
does) and tells it when a congested socket drains. Apps see it in
`scope["extensions"]["hub.direct_send"]` (hub.transports.direct); without it the hub falls back
to plain ASGI sends.

It subclasses an undocumented uvicorn class, so nothing in the core imports this module:
hub.transports.fast_path imports it lazily, runs `check_internals()`, and on any failure serves with
uvicorn's stock protocol instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders
from websockets.protocol import Protocol, State

from ..protocol import CloseCode, ErrorFrame, close_reason, encode
from ..wire.frames import http_refusal, text_frame
from .direct import EXTENSION, DetachableChannel, DirectChannel, Message
from .light_sync import Inbox, Signal

__all__ = ["HubWebSocketProtocol", "TransportChannel", "check_internals"]

logger = logging.getLogger("hub.ws")

# What this module calls or overrides on uvicorn's class, and the state it reads or sets
# (assigned in its __init__): a rename upstream must mean "no fast path", not a broken socket.
PARENT_METHODS = (
    "connection_lost",
    "data_received",
    "handle_bytes",
    "handle_close",
    "handle_connect",
    "handle_cont",
    "handle_events",
    "handle_parser_exception",
    "handle_ping",
    "handle_pong",
    "handle_text",
    "keepalive_timeout",
    "pause_writing",
    "resume_writing",
    "run_asgi",
    "send",
    "send_500_response",
    "send_receive_event_to_app",
    "shutdown",
)
PARENT_STATE = (
    "app",
    "close_sent",
    "close_timeout",
    "close_timer",
    "conn",
    "curr_msg_data_type",
    "disconnected",
    "frames",
    "handshake_complete",
    "handshake_initiated",
    "logger",
    "loop",
    "queue",
    "read_paused",
    "tasks",
    "transport",
    "writable",
)

# What uvicorn's protocol reads from a scope once the app has returned (its log lines).
# Bytes handed to websockets' parser at a time, so frames are counted as they come.
FRAME_SLICE = 8 * 1024

SCOPE_KEPT = frozenset(("type", "client", "server", "scheme", "root_path", "path", "query_string"))


def check_internals(parent: type = WebSocketsSansIOProtocol) -> None:
    """Raise RuntimeError naming what `parent` lacks of the uvicorn internals used here."""
    missing = [name for name in PARENT_METHODS if not callable(getattr(parent, name, None))]
    init = getattr(parent, "__init__", None)
    assigned = set(getattr(getattr(init, "__code__", None), "co_names", ()))
    missing += [name for name in PARENT_STATE if name not in assigned]
    if missing:
        raise RuntimeError(f"{parent.__qualname__} lacks {', '.join(missing)}")


class TransportChannel:
    """hub.transports.direct.DirectChannel over this protocol's transport."""

    __slots__ = ("_proto", "on_writable", "ready")

    def __init__(self, proto: HubWebSocketProtocol) -> None:
        self._proto = proto
        self.on_writable: Callable[[], None] | None = None
        # Open and under the high-water mark. Kept up to date by the protocol on every
        # state change, because the fan-out path asks it once per connection per frame.
        self.ready = False

    def refresh(self) -> None:
        self.ready = self.open() and self._proto.writable.is_set()

    @property
    def framed(self) -> bool:
        """True when `write_frame` may take bytes built by `text_frame` (no extension)."""
        return not self._proto.conn.extensions

    def open(self) -> bool:
        p = self._proto
        return p.handshake_complete and not p.close_sent and not p.transport.is_closing()

    def writable(self) -> bool:
        """Open and not congested: the transport's buffer is under its high-water mark."""
        return self.ready

    async def wait_writable(self) -> None:
        await self._proto.writable.wait()

    def write_frame(self, frame: bytes) -> None:
        """Write bytes made by `text_frame` (only when `framed`)."""
        self._proto.transport.write(frame)

    def write_text(self, payload: bytes) -> None:
        p = self._proto
        if p.conn.extensions:
            p.conn.send_text(payload)
            p.transport.write(b"".join(p.conn.data_to_send()))
        else:
            p.transport.write(text_frame(payload))

    def close(self, code: int, reason: str) -> None:
        self._proto.close_now(code, reason)

    # --- detached sessions: no task while the socket is idle ---------------------------

    def detach(self, wake: Callable[[], None]) -> None:
        """Let the app return while the socket stays open: from now on every ASGI receive
        message (client text, disconnect) is left for `take()` and `wake` is called."""
        p = self._proto
        p.detached = True
        # The app is done with the scope (headers, state, extensions: ~1.3 KiB); keep what
        # uvicorn's log lines read.
        p.scope = {k: v for k, v in p.scope.items() if k in SCOPE_KEPT}  # type: ignore[assignment]
        p.queue.on_put = wake
        if not p.queue.empty():
            wake()

    def take(self) -> Message | None:
        """The next ASGI receive message of a detached socket, None when there is none."""
        queue = self._proto.queue
        return None if queue.empty() else queue.get_nowait()

    def resume_reading(self) -> None:
        """Read the client again once its messages are handled (uvicorn pauses reading
        after each message until the app asks for the next one)."""
        p = self._proto
        if p.read_paused and p.queue.empty() and not p.reads_held and not p.transport.is_closing():
            p.read_paused = False
            p.transport.resume_reading()

    def track(self, task: asyncio.Task[None]) -> None:
        """uvicorn's shutdown waits for the task, as it does for the ASGI tasks."""
        tasks = self._proto.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def _frame_rate_of(app: object) -> float:
    """The hub's `ws_frame_rate`, found under uvicorn's middleware (0 when not a hub)."""
    for _ in range(8):
        state = getattr(app, "state", None)
        settings = getattr(getattr(state, "hub", None), "settings", None)
        if settings is not None:
            return float(getattr(settings, "ws_frame_rate", 0.0))
        app = getattr(app, "app", None)
    return 0.0


def _qualname(generator: object) -> str:
    code = getattr(generator, "gi_code", None)
    return str(getattr(code, "co_qualname", ""))


class HubWebSocketProtocol(WebSocketsSansIOProtocol):
    # Class-level defaults: an instance holds its own only once it changes them (memory per
    # idle connection, docs/benchmarks.md).
    reads_held = False  # reading stopped until the peer takes what is buffered
    frame_rate = 0.0  # frames per second the client may send (0: no limit)
    frame_credit = 0.0  # a stamp of 0 makes the first frame find the full burst
    frame_stamp = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channel = TransportChannel(self)
        # Memory per idle connection (docs/benchmarks.md): asyncio's Queue and Event hold
        # five eagerly allocated deques, ~3.7 KiB; these hold lists only while in use.
        self.queue: Inbox[dict[str, Any]] = Inbox()  # type: ignore[assignment]
        self.detached = False  # the app returned; the socket stays open (TransportChannel)
        writable = Signal()
        writable.set()
        self.writable = writable  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the app task starts later, so it sees the extension
            channel: DirectChannel = self.channel  # mypy checks it fits the core's Protocol
            _detachable: DetachableChannel = self.channel  # and this one
            scope["extensions"][EXTENSION] = {"channel": channel}
            rate = _frame_rate_of(self.app)
            if rate:
                self.frame_rate = rate

    # --- frames of any kind count against the socket's frame rate ---------------------------

    def _admit_frame(self) -> bool:
        """Take one frame from the socket's budget: False once the socket is closing, or when
        it is over its budget (then it is failed with 4029). Pings, pongs and continuation
        frames cost a parse and maybe a write each, and no op budget sees them."""
        if self.close_sent:
            return False
        rate = self.frame_rate
        if not rate:
            return True
        now = self.loop.time()
        credit = min(2 * rate, self.frame_credit + (now - self.frame_stamp) * rate)
        self.frame_stamp = now
        if credit < 1:
            self.frames = []
            self.conn.fail(CloseCode.RATE_LIMITED, f"more than {rate:g} frames per second")
            self.handle_parser_exception()
            return False
        self.frame_credit = credit - 1
        return True

    def handle_text(self, event: Any) -> None:
        if self._admit_frame():
            super().handle_text(event)

    def handle_bytes(self, event: Any) -> None:
        if self._admit_frame():
            super().handle_bytes(event)

    def handle_cont(self, event: Any) -> None:
        if self._admit_frame():
            super().handle_cont(event)

    def handle_pong(self, event: Any) -> None:
        if self._admit_frame():
            super().handle_pong(event)

    async def run_asgi(self) -> None:
        """uvicorn's, but the app's return does not close a detached socket."""
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None and not self.detached:
            self.transport.close()

    def handle_ping(self) -> None:
        if not self._admit_frame():
            return
        super().handle_ping()
        if not self.writable.is_set():
            # Every ping is answered with a pong written whether the peer reads or not: a
            # peer that sends pings and reads nothing would grow the buffer without bound.
            # Read nothing more from it until it takes what is buffered.
            self.reads_held = True
            transport = self.transport
            if not transport.is_closing() and transport.is_reading():
                transport.pause_reading()

    def resume_writing(self) -> None:
        if self.reads_held:
            self.reads_held = False
            if not self.read_paused and not self.transport.is_closing():
                self.transport.resume_reading()
        super().resume_writing()
        self.channel.refresh()
        callback = self.channel.on_writable
        if callback is not None and not self.close_sent:
            callback()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.channel.ready = False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.channel.ready = False

    def shutdown(self) -> None:
        self.channel.ready = False
        super().shutdown()

    def keepalive_timeout(self) -> None:
        self.channel.ready = False
        super().keepalive_timeout()
        self._reap_if_stuck()

    def handle_close(self, event: Any) -> None:
        super().handle_close(event)
        self.channel.refresh()
        self._reap_if_stuck()

    def _reap_if_stuck(self) -> None:
        """A closed transport with bytes still buffered waits for the peer to read them: one
        that never reads would keep the socket, its session and its slot forever (asyncio
        calls connection_lost only once the buffer is out). Give it `close_timeout`."""
        if self.transport.is_closing() and self.close_timer is None and not self.disconnected:
            if self.transport.get_write_buffer_size():
                self.close_timer = self.loop.call_later(self.close_timeout, self._give_up)

    def _give_up(self) -> None:
        """The close handshake did not finish in time: close, and drop what the peer did not
        take rather than wait for it."""
        self.close_timer = None
        self.transport.close()
        if not self.disconnected and self.transport.get_write_buffer_size():
            self.transport.abort()

    async def send(self, message: Any) -> None:
        try:
            await super().send(message)
        finally:  # accept opens the channel, close ends it
            self.channel.refresh()
            # The upgrade request and its 101 answer (headers and all) are only read before
            # the handshake completes: ~1.5 KiB per connection otherwise kept. Once.
            if self.handshake_complete and self.__dict__.pop("request", None) is not None:
                self.__dict__.pop("response", None)
                self._shed_handshake_parser()

    def _shed_handshake_parser(self) -> None:
        """websockets' server-side parser keeps the parsed upgrade request (~1.7 KiB) as a
        local for the connection's life, while it delegates to the frame parser. When that
        one waits for a new frame with nothing buffered, a fresh frame parser is the same
        state without the request: swap it in. Anything else: keep the parser as it is."""
        conn = self.conn
        outer = getattr(conn, "parser", None)  # websockets internals: any change, no swap
        frames = getattr(outer, "gi_yieldfrom", None)
        waiting = getattr(frames, "gi_yieldfrom", None)
        reader = getattr(conn, "reader", None)
        if (
            conn.state is State.OPEN
            and getattr(reader, "buffer", None) == b""
            and getattr(reader, "eof", None) is False
            and _qualname(outer) == "ServerProtocol.parse"
            and _qualname(frames) == "Protocol.parse"
            and _qualname(waiting) == "StreamReader.at_eof"
        ):
            fresh = Protocol.parse(conn)
            next(fresh)  # runs to the same wait for data
            conn.parser = fresh

    def data_received(self, data: bytes) -> None:
        if self.handshake_complete and len(data) > FRAME_SLICE:
            # websockets parses all it is given before any frame is counted: in slices, a
            # read of tiny frames (256 KiB is ~40,000) cannot hold the loop for long.
            for start in range(0, len(data), FRAME_SLICE):
                if self.close_sent or self.transport.is_closing():
                    return
                super().data_received(data[start : start + FRAME_SLICE])
            return
        super().data_received(data)
        refused = self.conn.handshake_exc
        if refused is not None and not self.handshake_initiated:
            self._refuse_upgrade(refused)

    def _refuse_upgrade(self, exc: Exception) -> None:
        """websockets refused the upgrade request itself (a line over 8 KiB, 129 headers, a
        body): uvicorn would never send its answer nor close. Answer and hang up."""
        if isinstance(exc, RequestLineTooLong):
            status = 414
        elif isinstance(exc, (HeaderLineTooLong, TooManyHeaders)):
            status = 431
        else:
            status = 400
        detail = str(exc.__cause__ or exc)[:120]
        self.conn.data_to_send()  # websockets' own text answer, if any: ours replaces it
        self.transport.write(http_refusal(status, f"invalid WebSocket upgrade: {detail}"))
        logger.info("refused websocket upgrade from %s with %d: %s", self.client, status, detail)
        self.handshake_initiated = self.handshake_complete = self.close_sent = True
        self.transport.close()

    def handle_parser_exception(self) -> None:
        """The parser refused a frame (too big, bad UTF-8, protocol error): say why in an
        error frame, then close as uvicorn does."""
        sent = self.conn.close_sent
        code = sent.code if sent is not None else int(CloseCode.INTERNAL_ERROR)
        reason = sent.reason if sent is not None else ""
        names = {
            1009: "frame_too_large",
            1007: "invalid_utf8",
            1002: "protocol_error",
            int(CloseCode.RATE_LIMITED): "rate_limited",
        }
        frame = ErrorFrame(
            code=names.get(code, "protocol_error"),
            message=reason or "protocol error",
            retryable=code == CloseCode.RATE_LIMITED,
            close=code,
        )
        if self.handshake_complete and not self.close_sent:
            self.transport.write(text_frame(encode(frame)))
        logger.info("closing websocket %s with %d: %s", self.client, code, reason)
        self.channel.ready = False
        if sent is not None:
            super().handle_parser_exception()
        else:  # uvicorn's branch asserts a close frame is out (websockets always sends one)
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": ""})
            self.close_sent = True
            self.transport.close()
        self._reap_if_stuck()

    def send_receive_event_to_app(self) -> None:
        # uvicorn logs a traceback for every invalid UTF-8 text frame; a hostile client could
        # flood the log that way. Check here and close with 1007 and one line instead.
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            try:
                data.decode()
            except UnicodeDecodeError:
                self.frames = []
                self.conn.fail(1007, "invalid UTF-8 in text frame")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    def close_now(self, code: int, reason: str) -> None:
        """Send a close frame without awaiting (as the ASGI `websocket.close` branch does)."""
        if self.close_sent or self.transport.is_closing() or self.conn.state is not State.OPEN:
            return
        reason = close_reason(reason)
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.channel.ready = False
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self._give_up)
