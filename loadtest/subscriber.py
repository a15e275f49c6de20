"""One subscriber connection: a raw socket whose frames are parsed and every seq checked.

The same object serves every reconnect of one logical subscriber, so its SeqTracker and epoch
carry across drops: that is what lets it verify "every seq exactly once, in order" end to end.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Final
from urllib.parse import quote

import msgspec

from .mux import ReadMux
from .tracker import SeqTracker
from .wsclient import (
    MAX_HANDSHAKE_BYTES,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameReader,
    HandshakeError,
    ProtocolError,
    client_frame,
    close_code,
    handshake_request,
    parse_handshake_response,
)

__all__ = ["ABRUPT", "Stats", "Subscriber"]

ABRUPT: Final = 1006  # connection lost without a close frame
SLOW_RCVBUF: Final = 4096
# Larger reads cost ~10x more: glibc serves allocations over ~128 KiB with mmap/munmap.
RECV_BYTES: Final = 65536  # a slow subscriber's receive buffer: fills after a few KiB


class _Frame(msgspec.Struct, gc=False):  # no GC tracking: one is made per event
    """Only the fields the generator needs; msgspec skips `data` and the rest unparsed."""

    op: str
    seq: int = 0
    ts: int = 0
    project: str = ""
    epoch: str = ""
    head: int = 0
    code: str = ""


_decode: Final = msgspec.json.Decoder(_Frame | list[_Frame]).decode


class Stats:
    """Counters shared by the subscribers of one worker (one for measured, one for slow ones).

    `lat` counts this wall-clock second's latencies in 10 us units: ts has millisecond
    resolution, so finer buckets would only record noise, and one dict increment per event is
    far cheaper than an HDR record. Each finished second moves to `done`, so per-second series
    are binned by receive time exactly, not by when a worker happened to report.
    """

    __slots__ = (
        "bad_frames",
        "deliveries",
        "done",
        "early",
        "errors",
        "foreign",
        "gaps",
        "last_delivery",
        "lat",
        "replays",
        "second_end",
    )

    def __init__(self) -> None:
        self.deliveries = 0
        self.lat: dict[int, int] = {}
        self.second_end = 0  # end of the second `lat` belongs to, in 10 us units
        self.done: list[tuple[int, dict[int, int]]] = []  # (Unix second, latency counts)
        self.last_delivery = 0  # 10 us units since the Unix epoch
        self.foreign = 0  # events of another project: must never happen
        self.early = 0  # events before the welcome: must never happen
        self.bad_frames = 0
        self.gaps = 0
        self.replays = 0
        self.errors: Counter[str] = Counter()

    def roll(self, now: int) -> None:
        """Close the current second (if it saw deliveries) and start the one holding `now`."""
        if self.lat:
            self.done.append((self.second_end // 100_000 - 1, self.lat))
            self.lat = {}
        self.second_end = (now // 100_000 + 1) * 100_000


class Subscriber(FrameReader):
    """A non-blocking socket read through the worker's ReadMux (no asyncio transport)."""

    def __init__(
        self,
        project: str,
        stats: Stats,
        on_lost: Callable[[Subscriber], None],
        *,
        slow: bool = False,
        types: str | None = None,
        keys: str | None = None,
    ) -> None:
        super().__init__()
        self.project = project
        self.stats = stats
        self.slow = slow
        self.types = types
        self.keys = keys
        self.tracker = SeqTracker()
        self.epoch = ""
        self.sock: socket.socket | None = None
        self.is_open = False  # handshake done
        self.live = False  # welcomed on the current connection
        self.close_code = 0  # code of the last close (ABRUPT when none was received)
        self.welcomes = 0
        self._on_lost = on_lost
        self._mux: ReadMux | None = None
        self._head = b""  # handshake response bytes so far
        self._accept = b""
        self._ready: asyncio.Future[None] | None = None  # resolved by the welcome

    # --- connecting ----------------------------------------------------------------------

    def target(self) -> str:
        query = []
        if self.tracker.started:  # resume: replay what was missed while away
            query.append(f"since={self.tracker.last}")
            if self.epoch:
                query.append(f"epoch={quote(self.epoch)}")
        if self.types:
            query.append(f"types={quote(self.types, safe=',*')}")
        if self.keys:
            query.append(f"keys={quote(self.keys, safe=',*/')}")
        path = f"/v1/projects/{quote(self.project)}/ws"
        return f"{path}?{'&'.join(query)}" if query else path

    async def open(self, host: str, port: int, mux: ReadMux) -> None:
        """Connect, upgrade and wait for the welcome (the caller bounds it with a timeout)."""
        loop = asyncio.get_running_loop()
        request, self._accept = handshake_request(host, port, self.target())
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.slow:  # a tiny receive buffer, so a stalled reader backs up quickly
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        self.sock, self._mux = sock, mux
        self._ready = loop.create_future()
        self.is_open = self.live = False
        self.close_code = 0
        self._head = b""
        self.reset_reader()
        try:
            await loop.sock_connect(sock, (host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mux.add(sock.fileno(), self)
            await loop.sock_sendall(sock, request)
            await self._ready
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the connection without a close frame (no on_lost: the caller decides)."""
        sock, self.sock = self.sock, None
        self.is_open = self.live = False
        if sock is not None:
            if self._mux is not None:
                self._mux.remove(sock.fileno())
            sock.close()

    def close(self) -> None:
        """Polite close at the end of a run: close frame, then FIN without waiting."""
        if self.sock is not None and self.is_open:
            self._write(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
        self.abort()

    def pause(self) -> None:
        if self.sock is not None and self._mux is not None:
            self._mux.pause(self.sock.fileno())

    def resume(self) -> None:
        if self.sock is not None and self._mux is not None:
            self._mux.resume(self.sock.fileno())

    def _write(self, data: bytes) -> None:
        # Only tiny control frames are written; a full send buffer just drops the pong.
        try:
            if self.sock is not None:
                self.sock.send(data)
        except OSError:
            pass

    # --- reading -------------------------------------------------------------------------

    def on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data = sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost(ConnectionError("connection lost"))
            return
        try:
            if not self.is_open:
                data = self._handshake(data)
                if not data:
                    return
            self.feed(data)
        except (HandshakeError, ProtocolError) as exc:
            self.stats.errors[type(exc).__name__] += 1
            self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        was_live = self.live
        if not self.close_code:
            self.close_code = ABRUPT
        self.abort()
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_exception(exc)
            ready.exception()  # retrieved here: the opener may already have given up
        if was_live:  # failures before the welcome belong to whoever is opening
            self._on_lost(self)

    def _handshake(self, data: bytes) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HANDSHAKE_BYTES:
                raise HandshakeError(0, "handshake response too large")
            return b""
        parse_handshake_response(self._head[:end], self._accept)
        self.is_open = True
        rest = self._head[end + 4 :]
        self._head = b""
        return rest

    # --- frames --------------------------------------------------------------------------

    def on_text(self, payload: bytes) -> None:
        # Hot path: runs for every frame of every connection. Keep it flat.
        stats = self.stats
        try:
            decoded = _decode(payload)
        except msgspec.MsgspecError:
            stats.bad_frames += 1
            return
        frames = decoded if isinstance(decoded, list) else (decoded,)
        tracker = self.tracker
        now = int(time.time() * 100_000)
        if now >= stats.second_end:
            stats.roll(now)
        lat = stats.lat
        fresh = 0
        for f in frames:
            if f.op != "event":
                self._on_control_frame(f)
                continue
            if f.project != self.project:
                stats.foreign += 1
                continue
            seq = f.seq
            if seq == tracker.expected:
                tracker.expected = seq + 1
                tracker.received += 1
            elif tracker.expected == 0:
                stats.early += 1
                continue
            elif not tracker.observe(seq):
                continue
            fresh += 1
            k = now - f.ts * 100
            lat[k] = lat.get(k, 0) + 1
        if fresh:
            stats.deliveries += fresh
            stats.last_delivery = now

    def _on_control_frame(self, f: _Frame) -> None:
        op = f.op
        if op == "welcome":
            if self.epoch and f.epoch != self.epoch:
                self.stats.errors["epoch_changed"] += 1
            self.epoch = f.epoch
            self.tracker.start(f.head)
            self.welcomes += 1
            self.live = True
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif op == "gap":
            self.stats.gaps += 1
            self.tracker.gap(f.head)
        elif op == "replayed":
            self.stats.replays += 1
        elif op == "error":
            self.stats.errors[f.code or "error"] += 1

    def on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self._write(client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE and self.sock is not None:
            self.close_code = close_code(payload)
            self._write(client_frame(OP_CLOSE, payload[:2]))
            self._lost(ConnectionError(f"closed by the server with {self.close_code}"))
