"""What an open hub (no secret) lets a browser do: only what the hub's own pages do.

Without a secret every request may read and publish everything, so the only thing standing
between a web page on another site and the hub on `127.0.0.1` is the browser. Browsers do not
stop a cross-site `text/plain` POST, a WebSocket, or a page whose DNS name was rebound to
127.0.0.1 (it then sends `Host` and `Origin` of its own name). `OpenModeGuard` refuses, on
every route, a request whose `Origin` is present and not allowed (403, or 1008 on a socket; a
`null` origin too), and a request that arrived on a loopback address with a `Host` that is not
a loopback name or address (403; DNS rebinding, as Jupyter refuses it) unless
`allowed_hosts` lists it. Clients that send no `Origin` (curl, services) and the hub's own
dashboard (same origin as its `Host`) pass.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from ..errors import HubError
from .origins import HostPolicy, HostRefused, OriginPolicy, OriginRefused
from .refusal import Refusal

__all__ = ["OpenModeGuard"]


def _arrived_on_loopback(scope: Scope) -> bool:
    server = scope.get("server")
    if not server:
        return False  # a Unix socket: no browser page reaches it by a DNS name
    try:
        return ipaddress.ip_address(str(server[0])).is_loopback
    except ValueError:
        return False


class OpenModeGuard:
    """ASGI middleware in front of an open hub: the Origin and Host rules above."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        origins: OriginPolicy,
        hosts: HostPolicy,
        http_refusal: Callable[[HubError], Response],
        ws_refusal: Callable[[WebSocket, HubError], Awaitable[None]],
    ) -> None:
        self.app = app
        self.origins = origins
        self.hosts = hosts
        self.refuse = Refusal(http_refusal, ws_refusal)

    def check(self, scope: Scope) -> None:
        headers = Headers(scope=scope)
        host = headers.get("host")
        if _arrived_on_loopback(scope) and not self.hosts.allows(host):
            raise HostRefused(
                f"host {(host or '')[:80]!r} is not a loopback name: an open hub answers "
                "only local names (set allowed_hosts to add one)"
            )
        origin = headers.get("origin")
        if origin is not None and not self.origins.allows(origin, host):
            raise OriginRefused(
                f"origin {origin[:80]!r} is not allowed: an open hub answers only its own "
                "pages and clients without Origin (set allowed_origins to add one)"
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind in ("http", "websocket"):
            try:
                self.check(scope)
            except HubError as exc:
                await self.refuse(exc, scope, receive, send)
                return
        await self.app(scope, receive, send)
