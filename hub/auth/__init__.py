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

from ..patterns import StarPatterns
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
