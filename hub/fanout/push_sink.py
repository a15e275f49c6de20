"""The push sink: non-blocking writes to a socket that says when it drains (the fast path).

The fan-out path writes a frame shared by a whole group while the socket is `writable()`;
a congested socket calls the connection's `drain_queue` back when it drains (`on_drain`).
Only WebSocket has one, through the uvicorn adapter's DirectChannel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from ..protocol import ErrorFrame
from ..wire.frames import text_frame
from .framers import WebSocketFramer, frame
from .outbound import Control, Outbound

if TYPE_CHECKING:
    from ..transports.direct import DirectChannel

__all__ = ["PushSink"]


class PushSink:
    direct: Literal[True] = True

    def __init__(self, channel: DirectChannel) -> None:
        self._channel = channel
        self._framer = WebSocketFramer()
        self._ended = asyncio.Event()  # wakes a send waiting for a socket that was cut

    def writable(self) -> bool:
        return self._channel.writable()

    def write(self, payload: bytes, frame: bytes | None = None) -> None:
        """Write one text message; `frame`, when given, is `payload` already framed."""
        if frame is not None and self._channel.framed:
            self._channel.write_frame(frame)
        else:
            self._channel.write_text(payload)

    def write_item(self, item: Outbound) -> None:
        self._channel.write_text(frame(self._framer, item))

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        self._channel.on_writable = callback

    async def send(self, item: Outbound) -> None:
        """Write once the socket takes it (the session path, before or beside fan-out)."""
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
            self.write_item(item)

    def end(self, error: ErrorFrame) -> None:
        """Write the last error frame if the socket takes it, then close: never wait."""
        self._ended.set()
        payload = self._framer.control(Control(error))
        with contextlib.suppress(Exception):
            self.write(payload, text_frame(payload))
            self._channel.close(error.close or 1011, error.message)

    def start(self, drain_queue: Callable[[], None]) -> None:
        self.on_drain(drain_queue)

    async def stop(self) -> None:
        self.on_drain(None)
