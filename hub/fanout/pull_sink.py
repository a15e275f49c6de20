"""The pull sink: a writer task per socket that takes the connection's queue and frames it.

For transports whose send must be awaited (plain ASGI WebSocket, SSE). The fan-out path
only queues and `notify()`s; the writer takes one control message or a chunk of events at
a time, frames it with its `Framer` and sends it. `end()` releases the stream at once: the
writer gets the last error out in `stop()` unless the socket stays congested for
`close_grace_s` (a send waiting for a peer that never reads may wait forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Literal, Protocol

from ..protocol import ErrorFrame
from .framers import Framer, frame
from .outbound import Control, Outbound

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["CLOSE_GRACE_S", "PullSink", "Transport"]

CLOSE_GRACE_S = 5.0  # an ended stream that cannot take its error in this long is cut

logger = logging.getLogger("hub.sink")


class Transport(Protocol):
    """The awaitable end of one socket."""

    async def send(self, data: bytes) -> None: ...
    async def close(self, error: ErrorFrame) -> None: ...


class PullSink:
    direct: Literal[False] = False

    def __init__(
        self,
        transport: Transport,
        framer: Framer,
        *,
        chunk_bytes: int,
        heartbeat_s: float,
        close_grace_s: float = CLOSE_GRACE_S,
    ) -> None:
        self._transport = transport
        self._framer = framer
        self._chunk_bytes = chunk_bytes  # per write: a cut socket keeps its last write
        self._heartbeat_s = heartbeat_s  # keepalive after this long quiet, if framed
        self._close_grace_s = close_grace_s
        self._lock = asyncio.Lock()  # the session's sends and the writer's take turns
        self._wake = asyncio.Event()
        self._last: ErrorFrame | None = None  # set by end(): the error, then the close
        self._task: asyncio.Task[None] | None = None
        self._last_write = asyncio.get_running_loop().time()
        self.finished = asyncio.Event()  # the stream has ended (or must be cut)

    def notify(self) -> None:
        self._wake.set()

    async def send(self, item: Outbound) -> None:
        await self._send(frame(self._framer, item))

    async def _send(self, data: bytes) -> None:
        async with self._lock:
            await self._transport.send(data)
            self._last_write = asyncio.get_running_loop().time()

    def end(self, error: ErrorFrame) -> None:
        self._last = error
        self._wake.set()
        self.finished.set()

    def start(self, connection: Connection) -> None:
        self._task = asyncio.create_task(self._write_loop(connection), name="hub-writer")

    async def stop(self) -> None:
        """Give an ending stream `close_grace_s` to send its error; else cut it."""
        task = self._task
        if task is None:
            return
        if self._last is not None:
            await asyncio.wait([task], timeout=self._close_grace_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _write_loop(self, connection: Connection) -> None:
        keepalive = self._framer.keepalive
        try:
            while True:
                await self._wait(keepalive is not None)
                sent = False
                while self._last is None and (item := connection.take_next(self._chunk_bytes)):
                    await self.send(item)
                    sent = True
                if self._last is not None:
                    await self.send(Control(self._last))
                    async with self._lock:
                        await self._transport.close(self._last)
                    return
                if keepalive is not None and not sent and self._quiet_for() >= self._heartbeat_s:
                    await self._send(keepalive)
        except Exception:  # the client went away; the endpoint sees the disconnect too
            logger.debug("writer stopped", exc_info=True)
        finally:
            self.finished.set()

    async def _wait(self, heartbeat: bool) -> None:
        """Until notified, or until a heartbeat is due."""
        if heartbeat:
            idle_for = self._heartbeat_s - self._quiet_for()
            if idle_for > 0 and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(idle_for):
                        await self._wake.wait()
        else:
            await self._wake.wait()
        self._wake.clear()

    def _quiet_for(self) -> float:
        return asyncio.get_running_loop().time() - self._last_write
