"""HS256 tokens: verify (`TokenVerifier`) and mint (`mint_token`), with secret rotation.

Tokens are JWTs (PyJWT, algorithm pinned) with `sub`, `exp`, `projects` (ids or `*` patterns
such as `acme-*`), `scope` (`subscribe`, `publish`) and optionally `types` (the event types the
token may read) and `keys` (key patterns: the entities whose events it may read). A verified
token becomes a `Principal` (hub.auth.grants).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from typing import Any, Final

import jwt
import msgspec

from ..errors import HubError, Unauthorized
from ..wire.keys import validate_key_pattern
from ..wire.topics import validate_pattern
from .grants import Principal

__all__ = [
    "ALGORITHM",
    "MAX_TOKEN_BYTES",
    "MIN_SECRET_BYTES",
    "TokenVerifier",
    "key_id",
    "mint_token",
    "parse_secrets",
]

ALGORITHM: Final = "HS256"
MIN_SECRET_BYTES: Final = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
MAX_TOKEN_BYTES: Final = 8192


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


class _Claims(msgspec.Struct):
    sub: str
    exp: float
    projects: list[str]
    scope: list[str] | str  # a list, or OAuth's space-separated string
    types: list[str] | None = None
    keys: list[str] | None = None


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
        keys = parsed.keys
        if keys is not None:
            try:
                keys = [validate_key_pattern(p) for p in keys]
            except HubError as exc:
                raise Unauthorized(f"invalid token claims: `keys`: {exc.message}") from None
        scopes = parsed.scope.split() if isinstance(parsed.scope, str) else parsed.scope
        return Principal(parsed.sub, parsed.projects, scopes, types, parsed.exp, keys)


def mint_token(
    secret: str,
    *,
    subject: str,
    projects: Sequence[str],
    scopes: Sequence[str] = ("subscribe",),
    ttl_s: float = 3600.0,
    types: Sequence[str] | None = None,
    now: float | None = None,
    keys: Sequence[str] | None = None,
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
    if keys is not None:
        claims["keys"] = list(keys)
    return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": key_id(secret)})
