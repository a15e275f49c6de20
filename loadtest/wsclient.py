"""A minimal client side of RFC 6455 for the load generator: handshake and frame parsing.

Why not `websockets`' client: at 100k+ deliveries/s on two cores shared with the hub, a task
wake-up and a message queue per frame per connection would make the generator the bottleneck.
Here frames are parsed straight out of `data_received` and handed to `on_text` synchronously.
No I/O in this module: the subscriber wires it to asyncio; tests feed it bytes.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Final

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameReader",
    "HandshakeError",
    "ProtocolError",
    "accept_key",
    "client_frame",
    "close_code",
    "handshake_request",
    "parse_handshake_response",
]

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HANDSHAKE_BYTES: Final = 16384


class ProtocolError(Exception):
    """The server sent something RFC 6455 forbids (masked frame, reserved bits, bad opcode)."""


class HandshakeError(Exception):
    """The upgrade was refused; `status` is the HTTP status (0 when unparseable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def handshake_request(host: str, port: int, target: str) -> tuple[bytes, bytes]:
    """The upgrade request for `target` (path and query) and the accept value to expect.

    No `Sec-WebSocket-Extensions`: compression would measure zlib, not fan-out.
    """
    key = base64.b64encode(os.urandom(16))
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return request, accept_key(key)


def parse_handshake_response(head: bytes, expected_accept: bytes) -> None:
    """Check the response head (up to the blank line); raise HandshakeError unless it is 101."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        raise HandshakeError(0, f"bad status line {lines[0][:80]!r}") from None
    if status != 101:
        raise HandshakeError(status, f"upgrade refused with HTTP {status}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"sec-websocket-accept") != expected_accept:
        raise HandshakeError(status, "wrong Sec-WebSocket-Accept")


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A final, masked client frame (control frames only here, so payload < 126 bytes)."""
    if len(payload) > 125:
        raise ValueError("client frames from the load generator are control frames")
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


def close_code(payload: bytes) -> int:
    """The code in a close frame's payload; 1005 (no status) when it carries none."""
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005


class FrameReader:
    """Incremental parser of server-to-client frames; subclasses implement the two callbacks.

    Whole frames found in a chunk are sliced straight from it; only a trailing partial frame
    is copied into the buffer, so the common case (complete frames per read) copies nothing.
    """

    __slots__ = ("_buf", "_frag")

    def __init__(self) -> None:
        self._buf = b""
        self._frag: list[bytes] | None = None  # pieces of a fragmented text message

    def reset_reader(self) -> None:
        self._buf = b""
        self._frag = None

    def on_text(self, payload: bytes) -> None:
        raise NotImplementedError

    def on_control(self, opcode: int, payload: bytes) -> None:
        raise NotImplementedError

    def feed(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
        n = len(data)
        pos = 0
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            if b1 & 0x80 or b0 & 0x70:
                raise ProtocolError("masked server frame or reserved bits set")
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode == OP_TEXT and b0 & 0x80 and self._frag is None:
                self.on_text(data[start:end])
            else:
                self._other_frame(b0, opcode, data[start:end])
            pos = end
        self._buf = data[pos:] if pos < n else b""

    def _other_frame(self, b0: int, opcode: int, payload: bytes) -> None:
        fin = b0 & 0x80
        if opcode >= OP_CLOSE:
            if not fin or len(payload) > 125 or opcode > OP_PONG:
                raise ProtocolError(f"bad control frame (opcode {opcode})")
            self.on_control(opcode, payload)
        elif opcode == OP_TEXT:
            if self._frag is not None:
                raise ProtocolError("new text message inside a fragmented one")
            self._frag = [payload]
        elif opcode == OP_CONT:
            if self._frag is None:
                raise ProtocolError("continuation without a message")
            self._frag.append(payload)
            if fin:
                whole = b"".join(self._frag)
                self._frag = None
                self.on_text(whole)
        else:
            raise ProtocolError(f"unexpected opcode {opcode} (the hub sends text only)")
