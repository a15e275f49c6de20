"""CORS: which pages of other origins may read the hub's HTTP answers (docs/security.md, "CORS").

The origins are the WebSocket ones (`allowed_origins`, hub.auth.origins.OriginPolicy): by
default only the hub's own origin, else the listed ones (`*` patterns), `*` alone any. An
allowed origin gets `Access-Control-Allow-Origin: <that origin>` (never `*`) on every HTTP
answer, including errors, so the page can read the JSON error; others get no CORS header,
so their browser hides the answer. A preflight (`OPTIONS` with
`Access-Control-Request-Method`) is answered here, before the auth gate (a browser sends no
token with it): 204 with the methods, headers and max age for an allowed origin, 403 with a
JSON error for any other.

No `Access-Control-Allow-Credentials`: the hub reads tokens from `Authorization: Bearer` (or
`?token=`), never from cookies, so pages need no credentials mode; a page that asks for one
(`credentials: "include"`, `withCredentials`) is refused by its browser, and ambient
credentials (cookies, client certificates) of another site never ride along.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth.origins import OriginPolicy
from ..errors import HubError, OriginRefused

__all__ = ["ALLOW_HEADERS", "ALLOW_METHODS", "EXPOSE_HEADERS", "CorsMiddleware"]

ALLOW_METHODS = "GET, HEAD, POST"
# What hub-client.js and plain pages send: the token, a JSON body, an SSE resume position.
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID, Accept"
# Beyond the always-readable ones: when to retry (429/503) and why a token was refused (401).
EXPOSE_HEADERS = "Retry-After, WWW-Authenticate"


class CorsMiddleware:
    """ASGI middleware in front of the others: preflights answered, CORS headers added."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        origins: OriginPolicy,
        max_age_s: int,
        http_refusal: Callable[[HubError], Response],
    ) -> None:
        self.app = app
        self.origins = origins
        self.refusal = http_refusal
        self.preflight_headers = {
            "access-control-allow-methods": ALLOW_METHODS,
            "access-control-allow-headers": ALLOW_HEADERS,
            "access-control-max-age": str(max_age_s),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        allowed = origin is not None and self.origins.allows(origin, headers.get("host"))
        if scope["method"] == "OPTIONS" and origin is not None:
            if "access-control-request-method" in headers:
                await self._preflight(origin, allowed)(scope, receive, send)
                return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers.add_vary_header("Origin")  # a cache must not mix origins
                if allowed:
                    assert origin is not None
                    response_headers["access-control-allow-origin"] = origin
                    response_headers["access-control-expose-headers"] = EXPOSE_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _preflight(self, origin: str, allowed: bool) -> Response:
        if not allowed:
            response = self.refusal(
                OriginRefused(
                    f"origin {origin[:80]!r} is not allowed to call this hub from a browser "
                    "(set allowed_origins to add it)"
                )
            )
        else:
            response = Response(status_code=204, headers=self.preflight_headers)
            response.headers["access-control-allow-origin"] = origin
        response.headers.add_vary_header("Origin")
        return response
