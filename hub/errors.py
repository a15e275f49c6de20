"""Errors that map to exactly one close code, HTTP status and error-frame code each.

Raised deep (backend, catalog, limits), translated once at the edge (app.py, ws_endpoint.py).
Every error the hub reports is here (`code`, HTTP status / close code):

    HubError                      internal, 500 / 1011
    +-- BadRequest                bad_request, 400 / 4400
    |   +-- EventValidationError  invalid_event, 422 / 4400 (names the bad field's path)
    |   +-- PayloadTooLarge       too_large, 413 / 1009
    +-- Unauthorized              unauthorized, 401 / 4001
    +-- Forbidden                 forbidden, 403 / 4003
    +-- OriginRefused             origin, 403 / 1008
    +-- HostRefused               host, 403 / 1008
    +-- RateLimited               rate_limited, 429 + Retry-After / 4029 (alias RateLimitExceeded)
    +-- OverCapacity              over_capacity, 503 + Retry-After / 1013
    +-- RequestTimeout            request_timeout, 408 / 1008
    +-- BackendUnavailable        unavailable, 503 / 1013
    +-- ReplayOverrun             replay_overrun, 500 / 4008

`retryable` (in the error frame and body) is true for the last five.
"""

from __future__ import annotations

import math

from .protocol import CloseCode

__all__ = [
    "BackendUnavailable",
    "BadRequest",
    "EventValidationError",
    "Forbidden",
    "HostRefused",
    "HubError",
    "OriginRefused",
    "OverCapacity",
    "PayloadTooLarge",
    "RateLimitExceeded",
    "RateLimited",
    "ReplayOverrun",
    "RequestTimeout",
    "Unauthorized",
]


class HubError(Exception):
    """Base of every error the hub reports to a client."""

    code = "internal"
    http_status = 500
    close_code = CloseCode.INTERNAL_ERROR
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(HubError):
    code = "bad_request"
    http_status = 400
    close_code = CloseCode.BAD_REQUEST


class EventValidationError(BadRequest):
    """An event that does not match its type: the message names the bad field's path."""

    code = "invalid_event"
    http_status = 422


class PayloadTooLarge(BadRequest):
    code = "too_large"
    http_status = 413
    close_code = CloseCode.MESSAGE_TOO_BIG


class Unauthorized(HubError):
    code = "unauthorized"
    http_status = 401
    close_code = CloseCode.UNAUTHORIZED


class Forbidden(HubError):
    code = "forbidden"
    http_status = 403
    close_code = CloseCode.FORBIDDEN


class OriginRefused(HubError):
    """A browser page of a site the Origin policy does not allow (hub.auth.origins)."""

    code = "origin"
    http_status = 403
    close_code = CloseCode.POLICY_VIOLATION


class HostRefused(HubError):
    """An open hub reached on loopback under a name that is not local (DNS rebinding)."""

    code = "host"
    http_status = 403
    close_code = CloseCode.POLICY_VIOLATION


class RateLimited(HubError):
    """Over a rate limit; `retry_after` seconds from now the same request would pass."""

    code = "rate_limited"
    http_status = 429
    close_code = CloseCode.RATE_LIMITED
    retryable = True

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


RateLimitExceeded = RateLimited  # hub.limits' name for the same error, kept for importers


class OverCapacity(HubError):
    """Too many connections (total, per subject, per address) or reads in flight."""

    code = "over_capacity"
    http_status = 503
    close_code = CloseCode.TRY_AGAIN_LATER
    retryable = True


class RequestTimeout(HubError):
    """A request body that did not arrive in time."""

    code = "request_timeout"
    http_status = 408
    close_code = CloseCode.POLICY_VIOLATION
    retryable = True


class BackendUnavailable(HubError):
    """The backend cannot be reached now; retrying later may work."""

    code = "unavailable"
    http_status = 503
    close_code = CloseCode.TRY_AGAIN_LATER
    retryable = True


class ReplayOverrun(HubError):
    """Retention moved past a running replay: the client resumes and is told `gap`."""

    code = "replay_overrun"
    close_code = CloseCode.SLOW_CONSUMER
    retryable = True
