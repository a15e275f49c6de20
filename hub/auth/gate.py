"""The auth gate: every request's principal, the Origin check, and the default-deny middleware.

Every path calls these with its Starlette HTTPConnection: `authorize(conn, project, scope)`
for the grant, `check_origin(conn)` for browser sockets. `AuthGate` refuses anything without a
valid token before it reaches a route, except the public paths, so a route added later is
closed by default. Without a secret every check grants all (the principal is `OPEN`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection
from typing import Final

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from ..config import Settings
from ..errors import HubError, Unauthorized
from .grants import OPEN, Permission, Principal
from .origins import OriginPolicy, OriginRefused
from .refusal import Refusal
from .tokens import TokenVerifier, parse_secrets

__all__ = [
    "PRINCIPAL_KEY",
    "AuthGate",
    "Security",
    "authenticate",
    "authorize",
    "bearer_token",
    "check_origin",
    "security_of",
]

PRINCIPAL_KEY: Final = "hub.principal"  # where the gate leaves the verified principal in scope


class Security:
    """The hub's verifier and Origin policy, built once from settings (app.state.security)."""

    def __init__(self, settings: Settings) -> None:
        secrets = parse_secrets(settings.secret)
        self.verifier = TokenVerifier(secrets) if secrets else None
        self.origins = OriginPolicy(settings.allowed_origins)

    @property
    def enabled(self) -> bool:
        return self.verifier is not None


def security_of(conn: HTTPConnection) -> Security:
    security: Security = conn.app.state.security
    return security


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token from `Authorization: Bearer ...`, else from the `token` query parameter."""
    header = conn.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return conn.query_params.get("token") or None


def authenticate(conn: HTTPConnection) -> Principal:
    """The request's principal (OPEN without a secret); raise Unauthorized (401/4001)."""
    cached = conn.scope.get(PRINCIPAL_KEY)
    if isinstance(cached, Principal):
        return cached
    verifier = security_of(conn).verifier
    if verifier is None:
        principal = OPEN
    else:
        token = bearer_token(conn)
        if token is None:
            raise Unauthorized("token missing: send `Authorization: Bearer <token>` or ?token=")
        principal = verifier.verify(token)
    conn.scope[PRINCIPAL_KEY] = principal
    return principal


def authorize(conn: HTTPConnection, project: str, permission: Permission) -> Principal:
    """Authenticate, then check the grant: 401/4001 without a valid token, 403/4003 without
    the project or the scope."""
    principal = authenticate(conn)
    principal.check(project, permission)
    return principal


def check_origin(conn: HTTPConnection) -> None:
    """Refuse a browser page from another site (1008 on sockets, 403 over HTTP)."""
    origin = conn.headers.get("origin")
    if not security_of(conn).origins.allows(origin, conn.headers.get("host")):
        raise OriginRefused(f"origin {(origin or '')[:80]!r} is not allowed")


_PROJECT_PATH: Final = re.compile(r"^/v1/projects/([^/]+)/")
_READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


class AuthGate:
    """ASGI middleware, the default-deny layer in front of every route.

    Sockets must pass the Origin policy. With a secret, every path but the public ones needs
    a valid token, and every path under `/v1/projects/{project}/` needs a token granting that
    project: `subscribe` to read (GET, WebSocket), `publish` for anything else. Routes check
    again and apply the token's `types`; a route added later is closed all the same.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        public_paths: Collection[str],
        http_refusal: Callable[[HubError], Response],
        ws_refusal: Callable[[WebSocket, HubError], Awaitable[None]],
        public_prefixes: Collection[str] = (),
    ) -> None:
        self.app = app
        self.public_paths = frozenset(public_paths)
        self.public_prefixes = tuple(p.rstrip("/") + "/" for p in public_prefixes)
        self.refuse = Refusal(http_refusal, ws_refusal)

    def is_public(self, path: str) -> bool:
        return path in self.public_paths or (
            bool(self.public_prefixes) and path.startswith(self.public_prefixes)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        path: str = scope["path"]
        try:
            if kind == "websocket":
                check_origin(conn)
            if not self.is_public(path):
                principal = authenticate(conn)
                project = _PROJECT_PATH.match(path)
                if project is not None:
                    reads = kind == "websocket" or scope["method"] in _READ_METHODS
                    principal.check(project.group(1), "subscribe" if reads else "publish")
        except HubError as exc:
            await self.refuse(exc, scope, receive, send)
            return
        await self.app(scope, receive, send)
