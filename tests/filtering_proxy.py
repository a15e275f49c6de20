"""A loopback HTTP/1.1 proxy in front of a hub that blocks some requests the way networks do.

Per request head it can **hold** the request (accept it, answer nothing, ever: a handshake that
hangs, or a proxy that buffers an event stream it never flushes) or **refuse** it (403 and
close: a proxy that blocks WebSocket upgrades); everything else passes through byte for byte,
unless `cut_after` is given: then a connection is cut as soon as the hub's bytes on it have
contained that marker (a network that drops connections right after the hub's `welcome`).
Browsers load the page through it, so what they meet is the network's doing, not the client's
configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable

__all__ = ["FilteringProxy", "filtering_proxy", "is_upgrade", "path_contains"]

Rule = Callable[[bytes], bool]
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
REFUSAL = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def is_upgrade(head: bytes) -> bool:
    return b"\r\nupgrade: websocket" in head.lower()


def path_contains(fragment: str) -> Rule:
    """A rule on the request line's target (`GET /v1/projects/p/sse?... HTTP/1.1`)."""
    needle = fragment.encode()
    return lambda head: needle in head.split(b"\r\n", 1)[0]


def _never(head: bytes) -> bool:
    return False


class FilteringProxy:
    def __init__(
        self,
        target_port: int,
        *,
        hold: Rule = _never,
        refuse: Rule = _never,
        cut_after: bytes | None = None,
    ) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.cut = 0  # connections cut so far
        self.hold = hold
        self.refuse = refuse
        self.requests: list[str] = []  # every request line seen, e.g. "GET /v1/... HTTP/1.1"
        self.held = 0  # requests held so far
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # either side went away
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.add(upstream)
        back = asyncio.create_task(self._answers(upstream_reader, writer))
        try:
            while True:  # one request head at a time (browsers do not pipeline)
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
                if self.refuse(head):
                    self.refused += 1
                    writer.write(REFUSAL)
                    await writer.drain()
                    return
                if self.hold(head):
                    self.held += 1
                    await reader.read()  # until the client gives up and closes
                    return
                upstream.write(head)
                if found := _LENGTH.search(head):
                    upstream.write(await reader.readexactly(int(found.group(1))))
                await upstream.drain()
                if is_upgrade(head):  # a passed WebSocket: frames from here on
                    await _pump(reader, upstream)
                    return
        finally:
            back.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await back
            self._writers.discard(upstream)
            upstream.close()

    async def _answers(self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The hub's bytes to the client, until either side ends or `cut_after` went by."""
        marker = self.cut_after
        seen = b""
        try:
            while data := await upstream.read(65536):
                writer.write(data)
                await writer.drain()
                if marker is not None:
                    seen = seen[-len(marker) :] + data
                    if marker in seen:
                        self.cut += 1
                        return
        finally:
            writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def filtering_proxy(
    target_port: int,
    *,
    hold: Rule = _never,
    refuse: Rule = _never,
    cut_after: bytes | None = None,
) -> AsyncIterator[FilteringProxy]:
    proxy = FilteringProxy(target_port, hold=hold, refuse=refuse, cut_after=cut_after)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
