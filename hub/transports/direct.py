"""The `hub.direct_send` ASGI extension, as the core sees it.

A server that can write to a socket without awaiting puts a `DirectChannel` in
`scope["extensions"][EXTENSION]["channel"]`; the fan-out then writes pre-framed bytes straight
to the transport. Only hub.transports.uvicorn_ws provides one, and the core never imports it:
without the extension every socket takes the portable ASGI path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

__all__ = ["EXTENSION", "DirectChannel"]

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
