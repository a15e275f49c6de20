"""How a middleware in front of the app (auth gate, open-mode guard) answers what it refuses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from ..errors import HubError

__all__ = ["Refusal"]


class Refusal:
    """An HTTP request gets the error's response; a WebSocket is accepted and then closed with
    the error frame and code, since a refused handshake would reach the client as a bare HTTP
    status that browsers do not show to the page."""

    __slots__ = ("http", "ws")

    def __init__(
        self,
        http: Callable[[HubError], Response],
        ws: Callable[[WebSocket, HubError], Awaitable[None]],
    ) -> None:
        self.http = http
        self.ws = ws

    async def __call__(self, exc: HubError, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(exc)(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        await self.ws(websocket, exc)
