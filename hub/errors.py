"""Errors that map to exactly one close code, HTTP status and error-frame code each.

Raised deep (backend, catalog, limits), translated once at the edge (app.py, ws_endpoint.py).
"""

from __future__ import annotations

from .protocol import CloseCode

__all__ = [
    "BackendUnavailable",
    "BadRequest",
    "EventValidationError",
    "Forbidden",
    "HubError",
    "PayloadTooLarge",
    "RateLimited",
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


class RateLimited(HubError):
    code = "rate_limited"
    http_status = 429
    close_code = CloseCode.RATE_LIMITED
    retryable = True


class BackendUnavailable(HubError):
    """The backend cannot be reached now; retrying later may work."""

    code = "unavailable"
    http_status = 503
    close_code = CloseCode.TRY_AGAIN_LATER
    retryable = True
