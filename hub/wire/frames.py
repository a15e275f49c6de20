"""Bytes the hub builds itself: batch frames, WebSocket text frames, raw HTTP refusals.

Pure functions of their input (no asyncio, no server): the fan-out encodes a group's batch and
frames it once, then writes the same bytes to every socket of the group.
"""

from __future__ import annotations

import struct
from http import HTTPStatus

import msgspec

__all__ = ["encode_batch", "error_body", "http_refusal", "text_frame"]


def encode_batch(encoded_frames: list[bytes]) -> bytes:
    """Join already encoded frames into one JSON array frame (a single frame stays as is)."""
    if len(encoded_frames) == 1:
        return encoded_frames[0]
    return b"[" + b",".join(encoded_frames) + b"]"


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final, uncompressed server-to-client text frame around `payload`."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def error_body(message: str, code: str = "bad_request") -> bytes:
    """The JSON body of an HTTP refusal, as the app's own errors have it."""
    return msgspec.json.encode(
        {"error": {"code": code, "message": message[:300], "retryable": False}}
    )


def http_refusal(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 response refusing the request, for protocols that write raw bytes."""
    body = error_body(message, "too_large" if status in (414, 431) else "bad_request")
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body
