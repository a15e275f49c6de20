"""Heavy reads: history pages and snapshots too large to answer in one write.

A response above `heavy_read_bytes` takes one of `max_heavy_reads` process-wide slots (none
free: 503 with Retry-After) and is streamed in chunks, yielding to the event loop between
them, so neither its bytes nor its encoding pile up while other clients wait. A client that
does not take it within `heavy_read_timeout_s` is cut and its slot given back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..config import Settings
from ..limits import OverCapacity

__all__ = [
    "CHUNK_BYTES",
    "ReadLimiter",
    "ReadSlot",
    "json_array_chunks",
    "read_limiter_of",
    "read_response",
]

logger = logging.getLogger("hub.reads")

CHUNK_BYTES = 64 * 1024  # one write: about the transport's high-water mark


class ReadSlot:
    """One heavy read in flight; `release()` (idempotent) gives its place back."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: ReadLimiter) -> None:
        self._limiter: ReadLimiter | None = limiter

    def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter.in_flight -= 1


class ReadLimiter:
    """Heavy reads in flight, process-wide."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.refused = 0

    @property
    def busy(self) -> bool:
        return self.in_flight >= self.limit

    def acquire(self) -> ReadSlot:
        if self.busy:
            raise self.refusal()
        self.in_flight += 1
        return ReadSlot(self)

    def refusal(self) -> OverCapacity:
        self.refused += 1
        return OverCapacity(
            f"{self.limit} large reads in flight; retry shortly or ask for a smaller page"
        )


def read_limiter_of(conn: HTTPConnection, settings: Settings) -> ReadLimiter:
    """The app's limiter, made on first use (one app per process)."""
    state = conn.app.state
    limiter: ReadLimiter | None = getattr(state, "read_limiter", None)
    if limiter is None:
        limiter = state.read_limiter = ReadLimiter(settings.max_heavy_reads)
    return limiter


def json_array_chunks(
    head: bytes, frames: Sequence[bytes], tail: bytes, chunk_bytes: int
) -> Iterator[bytes]:
    """`head` + frames joined by commas + `tail`, cut in chunks of about `chunk_bytes` (each
    made by one join: concatenating large bytes copies them every time)."""
    part = [head]
    size = len(head)
    for i, frame in enumerate(frames):
        if i:
            part.append(b",")
            size += 1
        part.append(frame)
        size += len(frame)
        if size >= chunk_bytes:
            yield b"".join(part)
            part, size = [], 0
    part.append(tail)
    yield b"".join(part)


def read_response(
    conn: HTTPConnection, settings: Settings, head: bytes, frames: Sequence[bytes], tail: bytes
) -> Response:
    """A JSON response `head` + frames joined by commas + `tail`; streamed when heavy."""
    length = len(head) + sum(len(f) for f in frames) + max(0, len(frames) - 1) + len(tail)
    if length <= settings.heavy_read_bytes:
        body = b"".join(json_array_chunks(head, frames, tail, length + 1))  # one chunk
        return Response(body, media_type="application/json")
    slot = read_limiter_of(conn, settings).acquire()  # OverCapacity: 503 + Retry-After
    return _StreamedJson(head, frames, tail, length, slot, settings.heavy_read_timeout_s)


class _StreamedJson(Response):
    """Writes its body chunk by chunk, yielding to the loop in between; holds a read slot."""

    def __init__(
        self,
        head: bytes,
        frames: Sequence[bytes],
        tail: bytes,
        length: int,
        slot: ReadSlot,
        timeout_s: float,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"content-type": "application/json", "content-length": str(length)})
        self._parts = (head, frames, tail)
        self._slot = slot
        self._timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._stream(send)
        except TimeoutError:
            logger.info("cut a %s response not taken within %gs", scope["path"], self._timeout_s)
        finally:
            self._slot.release()
            self._parts = (b"", (), b"")

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        head, frames, tail = self._parts
        for chunk in json_array_chunks(head, frames, tail, CHUNK_BYTES):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0)  # a fast reader never blocks the send: let others run
        await send({"type": "http.response.body", "body": b""})
