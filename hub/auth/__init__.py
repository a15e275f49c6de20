"""Who may read or publish which project: tokens, grants, the gate, origins, log redaction.

- `tokens`: verify and mint HS256 tokens (`TokenVerifier`, `mint_token`, secret rotation).
- `grants`: what a token allows (`Principal`, `GrantedTypeFilter`, `OPEN`, expiry).
- `gate`: each request's principal and the default-deny middleware (`authorize`, `AuthGate`).
- `origins`: which browser origins and `Host` names may reach the hub.
- `open_mode`: what a hub without a secret lets a browser do (`OpenModeGuard`).
- `refusal`: how a middleware answers what it refuses, over HTTP or a WebSocket.
- `redaction`: tokens never reach the log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_exports import lazy_getattr

if TYPE_CHECKING:
    from ..wire.patterns import StarPatterns
    from .gate import (
        AuthGate,
        Security,
        authenticate,
        authorize,
        bearer_token,
        check_origin,
        security_of,
    )
    from .grants import OPEN, GrantedTypeFilter, Principal, schedule_expiry
    from .origins import OriginPolicy, OriginRefused
    from .redaction import RedactTokens, install_log_redaction
    from .tokens import (
        ALGORITHM,
        MIN_SECRET_BYTES,
        TokenVerifier,
        key_id,
        mint_token,
        parse_secrets,
    )

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

# Public name -> the module that defines it: loaded on first use, so `hub.auth.grants` alone
# does not load PyJWT or starlette.
_MODULE_OF: dict[str, str] = {
    "ALGORITHM": ".tokens",
    "AuthGate": ".gate",
    "GrantedTypeFilter": ".grants",
    "MIN_SECRET_BYTES": ".tokens",
    "OPEN": ".grants",
    "OriginPolicy": ".origins",
    "OriginRefused": ".origins",
    "Principal": ".grants",
    "RedactTokens": ".redaction",
    "Security": ".gate",
    "StarPatterns": "..wire.patterns",
    "TokenVerifier": ".tokens",
    "authenticate": ".gate",
    "authorize": ".gate",
    "bearer_token": ".gate",
    "check_origin": ".gate",
    "install_log_redaction": ".redaction",
    "key_id": ".tokens",
    "mint_token": ".tokens",
    "parse_secrets": ".tokens",
    "schedule_expiry": ".grants",
    "security_of": ".gate",
}

__getattr__ = lazy_getattr(__name__, _MODULE_OF, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
