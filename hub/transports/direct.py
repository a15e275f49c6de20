"""The `hub.direct_send` ASGI extension, as the core sees it.

A server that can write to a socket without awaiting puts a `DirectChannel` in
`scope["extensions"][EXTENSION]["channel"]`; the fan-out then writes pre-framed bytes straight
to the transport. Only hub.transports.uvicorn_ws provides one, and the core never imports it:
without the extension every socket takes the portable ASGI path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, Protocol, runtime_checkable

__all__ = ["EXTENSION", "DetachableChannel", "DirectChannel", "Message"]

Message = dict[str, Any]  # an ASGI receive message

EXTENSION: Final = "hub.direct_send"


class DirectChannel(Protocol):
    """What the app may do with the socket without awaiting: write, close, watch drains."""

    on_writable: Callable[[], None] | None  # called when a congested socket drains

    @property
    def framed(self) -> bool:
        """True when `write_frame` may take bytes built by `frames.text_frame`."""

    def open(self) -> bool: ...

    def writable(self) -> bool:
        """Open and not congested: the transport's buffer is under its high-water mark."""

    async def wait_writable(self) -> None: ...

    def write_frame(self, frame: bytes) -> None:
        """Write bytes made by `frames.text_frame` (only when `framed`)."""

    def write_text(self, payload: bytes) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


@runtime_checkable
class DetachableChannel(Protocol):
    """A channel whose socket outlives the app's ASGI call: an idle subscriber then holds no
    task (hub.transports.ws_endpoint). Messages the client sends wait for `take()`."""

    def detach(self, wake: Callable[[], None]) -> None:
        """From now on call `wake` whenever a message (text, disconnect) arrives."""

    def take(self) -> Message | None: ...

    def resume_reading(self) -> None:
        """Read the client again once its messages are handled."""

    def track(self, task: asyncio.Task[None]) -> None:
        """Have the server wait for this task at shutdown, as for its own."""
