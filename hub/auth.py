"""Who may read or publish which project: tokens, grants, the Origin allowlist.

Tokens are HS256 JWTs (PyJWT, algorithm pinned) with `sub`, `exp`, `projects` (ids or `*`
patterns such as `acme-*`), `scope` (`subscribe`, `publish`) and optionally `types` (the event
types the token may read). Every path calls the functions below with its Starlette
HTTPConnection: `authorize(conn, project, scope)` for the grant, `check_origin(conn)` for browser
sockets, `Principal.type_filter(patterns)` for what it may see. `AuthGate` (middleware) refuses
anything without a valid token before it reaches a route, except the public paths, so a route
added later is closed by default. Without a secret the hub runs open: every check grants all,
and `hub.open_mode.OpenModeGuard` keeps browser pages of other sites and rebound DNS names out.
The Origin and Host rules live in `hub.origins`, log redaction in `hub.redaction` (both
re-exported here).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any, Final, Literal

import jwt
import msgspec
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .config import Settings
from .errors import Forbidden, HubError, Unauthorized
from .origins import OriginPolicy, OriginRefused
from .redaction import RedactTokens, install_log_redaction
from .refusal import Refusal
from .star_patterns import StarPatterns
from .topics import TypeFilter, validate_pattern

__all__ = [
    "ALGORITHM",
    "MIN_SECRET_BYTES",
    "OPEN",
    "AuthGate",
    "GrantedTypeFilter",
    "OriginPolicy",
    "OriginRefused",
    "Principal",
    "RedactTokens",
    "Security",
    "StarPatterns",
    "TokenVerifier",
    "authenticate",
    "authorize",
    "bearer_token",
    "check_origin",
    "install_log_redaction",
    "key_id",
    "mint_token",
    "parse_secrets",
    "schedule_expiry",
    "security_of",
]

logger = logging.getLogger("hub.auth")

ALGORITHM: Final = "HS256"
MIN_SECRET_BYTES: Final = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
MAX_TOKEN_BYTES: Final = 8192
PRINCIPAL_KEY: Final = "hub.principal"  # where the gate leaves the verified principal in scope
Permission = Literal["subscribe", "publish"]
SCOPES: Final = frozenset({"subscribe", "publish"})


def parse_secrets(raw: str) -> list[str]:
    """`HUB_SECRET` / `--secret`: one secret, or several comma-separated during a rotation."""
    secrets = [s.strip() for s in raw.split(",") if s.strip()]
    for secret in secrets:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"a secret must be at least {MIN_SECRET_BYTES} bytes "
                "(make one with `hub token --generate-secret`)"
            )
    return secrets


def key_id(secret: str) -> str:
    """The `kid` for a secret: a digest prefix, so a rotation needs no extra configuration."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


class GrantedTypeFilter(TypeFilter):
    """The client's requested patterns, intersected with the types its token may read.

    It is a TypeFilter (same `matches`, `match_all`, `patterns`, equality and hash), so the
    connection manager groups and caches it like any other filter.
    """

    __slots__ = ("granted",)

    def __init__(self, patterns: Iterable[str], granted: TypeFilter) -> None:
        super().__init__(patterns)
        self.granted = granted
        self.match_all = self.match_all and granted.match_all

    def matches(self, event_type: str) -> bool:
        return super().matches(event_type) and self.granted.matches(event_type)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, GrantedTypeFilter)
            and other.patterns == self.patterns
            and other.granted.patterns == self.granted.patterns
        )

    def __hash__(self) -> int:
        return hash((self.patterns, self.granted.patterns))

    def __repr__(self) -> str:
        granted = list(self.granted.patterns)
        return f"GrantedTypeFilter({list(self.patterns)!r}, granted={granted!r})"


class Principal:
    """What a request may do: the verified token's grant, or everything on an open hub."""

    __slots__ = ("_projects", "_types", "expires_at", "scopes", "subject")

    def __init__(
        self,
        subject: str | None,
        projects: Iterable[str],
        scopes: Iterable[str],
        types: Iterable[str] | None = None,
        expires_at: float | None = None,
    ) -> None:
        self.subject = subject
        self.scopes = frozenset(scopes) & SCOPES
        self.expires_at = expires_at  # Unix time; None: never
        self._projects = StarPatterns(projects)
        self._types = TypeFilter(types) if types is not None else None

    @property
    def projects(self) -> tuple[str, ...]:
        return self._projects.patterns

    @property
    def types(self) -> tuple[str, ...] | None:
        return self._types.patterns if self._types is not None else None

    def check(self, project: str, permission: Permission) -> None:
        """Raise Forbidden unless this principal may `permission` on `project`."""
        if not self._projects.matches(project):
            raise Forbidden(f"token does not grant project {project[:80]!r}")
        if permission not in self.scopes:
            raise Forbidden(f"token lacks the {permission!r} scope")

    def type_filter(self, patterns: Iterable[str]) -> TypeFilter:
        """The filter for a subscription asking for `patterns`, within the token's `types`."""
        if self._types is None or self._types.match_all:
            return TypeFilter(patterns)
        return GrantedTypeFilter(patterns, self._types)

    def seconds_left(self, now: float | None = None) -> float | None:
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def __repr__(self) -> str:
        return f"Principal(subject={self.subject!r}, projects={list(self.projects)!r})"


OPEN: Final = Principal(None, ["*"], SCOPES)  # what every request is on a hub without a secret


class _Claims(msgspec.Struct):
    sub: str
    exp: float
    projects: list[str]
    scope: list[str] | str  # a list, or OAuth's space-separated string
    types: list[str] | None = None


_PROJECT_PATTERN: Final = re.compile(r"[A-Za-z0-9._*-]{1,128}")


class TokenVerifier:
    """Verifies HS256 tokens against one or more secrets; `kid` picks one, else try each."""

    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("TokenVerifier needs at least one secret")
        self._secrets = list(secrets)
        self._by_kid = {key_id(s): s for s in secrets}

    def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthorized("malformed token") from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise Unauthorized(f"token algorithm {str(alg)[:20]!r} is not accepted (only HS256)")
        kid = header.get("kid")
        if kid is None:
            candidates = self._secrets
        else:
            secret = self._by_kid.get(kid) if isinstance(kid, str) else None
            if secret is None:
                raise Unauthorized("token signed with an unknown key (kid)")
            candidates = [secret]
        for secret in candidates:
            try:
                claims = jwt.decode(
                    token,
                    secret,
                    algorithms=[ALGORITHM],
                    options={
                        "require": ["exp", "sub"],
                        "enforce_minimum_key_length": True,
                        # `iat` grants nothing; checking it refuses tokens minted on a
                        # machine whose clock runs a second ahead of ours.
                        "verify_iat": False,
                    },
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise Unauthorized("token expired") from None
            except jwt.InvalidTokenError as exc:
                raise Unauthorized(f"invalid token: {str(exc)[:120]}") from None
            return self._principal(claims)
        raise Unauthorized("token signature does not verify")

    @staticmethod
    def _principal(claims: dict[str, Any]) -> Principal:
        try:
            parsed = msgspec.convert(claims, _Claims)
        except msgspec.ValidationError as exc:
            raise Unauthorized(f"invalid token claims: {exc}") from None
        if not parsed.sub or len(parsed.sub) > 256:
            raise Unauthorized("invalid token claims: `sub` must be 1-256 characters")
        if not parsed.projects or not all(_PROJECT_PATTERN.fullmatch(p) for p in parsed.projects):
            raise Unauthorized("invalid token claims: `projects` must list project ids or patterns")
        types = parsed.types
        if types is not None:
            try:
                types = [validate_pattern(p) for p in types]
            except HubError as exc:
                raise Unauthorized(f"invalid token claims: `types`: {exc.message}") from None
        scopes = parsed.scope.split() if isinstance(parsed.scope, str) else parsed.scope
        return Principal(parsed.sub, parsed.projects, scopes, types, parsed.exp)


def mint_token(
    secret: str,
    *,
    subject: str,
    projects: Sequence[str],
    scopes: Sequence[str] = ("subscribe",),
    ttl_s: float = 3600.0,
    types: Sequence[str] | None = None,
    now: float | None = None,
) -> str:
    """An HS256 token for `hub token` and tests; `kid` names the secret that signed it."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": issued,
        "exp": issued + int(ttl_s),
        "projects": list(projects),
        "scope": list(scopes),
    }
    if types is not None:
        claims["types"] = list(types)
    return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": key_id(secret)})


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


def schedule_expiry(
    principal: Principal, on_expiry: Callable[[], None]
) -> asyncio.TimerHandle | None:
    """Call `on_expiry` on the loop when the token expires; cancel the handle on disconnect."""
    left = principal.seconds_left()
    if left is None:
        return None
    return asyncio.get_running_loop().call_later(max(left, 0.0), on_expiry)


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
