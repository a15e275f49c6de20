"""Real-time event hub: project-scoped WebSocket/SSE fan-out with resumable sequences."""

from .app import create_app
from .backends import Backend, MemoryBackend, create_backend
from .catalog import EventCatalog
from .config import Settings
from .core import Hub
from .errors import (
    BackendUnavailable,
    BadRequest,
    EventValidationError,
    Forbidden,
    HubError,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
)
from .manager import ConnectionManager
from .protocol import CloseCode

__all__ = [
    "Backend",
    "BackendUnavailable",
    "BadRequest",
    "CloseCode",
    "ConnectionManager",
    "EventCatalog",
    "EventValidationError",
    "Forbidden",
    "Hub",
    "HubError",
    "MemoryBackend",
    "PayloadTooLarge",
    "RateLimited",
    "Settings",
    "Unauthorized",
    "create_app",
    "create_backend",
]
