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
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .auth import OriginPolicy, OriginRefused, StarPatterns
from .errors import HubError
from .protocol import CloseCode

__all__ = ["HostPolicy", "HostRefused", "OpenModeGuard", "is_loopback_host"]


class HostRefused(HubError):
    code = "host"
    http_status = 403
    close_code = CloseCode.POLICY_VIOLATION


def is_loopback_host(hostname: str) -> bool:
    """`localhost` (and `*.localhost`, which browsers resolve to loopback), 127.0.0.0/8, ::1."""
    name = hostname.strip().lower().rstrip(".").strip("[]")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _hostname(host_header: str) -> str | None:
    """The name in a `Host` header without its port, or None when it does not parse."""
    try:
        parsed = urlsplit("//" + host_header.strip())
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return None
    return parsed.hostname or None


class HostPolicy:
    """Which `Host` names a request that arrived on loopback may carry: loopback names and
    addresses, plus `allowed_hosts` (comma-separated names, `*` patterns; `*` alone: any)."""

    def __init__(self, allowed: str = "") -> None:
        entries = [e.strip().lower().rstrip(".") for e in allowed.split(",") if e.strip()]
        self.any = "*" in entries
        self.extra = StarPatterns(entries)

    def allows(self, host_header: str | None) -> bool:
        if host_header is None or self.any:  # HTTP/1.0 without Host: not a browser
            return True
        name = _hostname(host_header)
        if name is None:
            return False
        return is_loopback_host(name) or self.extra.matches(name.rstrip("."))


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
        self.http_refusal = http_refusal
        self.ws_refusal = ws_refusal

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
                if kind == "http":
                    await self.http_refusal(exc)(scope, receive, send)
                else:
                    # Accept, then close with 1008: a refused handshake is a bare HTTP status.
                    websocket = WebSocket(scope, receive, send)
                    await websocket.accept()
                    await self.ws_refusal(websocket, exc)
                return
        await self.app(scope, receive, send)
