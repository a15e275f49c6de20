"""Real-time event hub: project-scoped WebSocket/SSE fan-out with resumable sequences.

The names below are loaded on first use, so `import hub.protocol` (or any pure module) does not
pull in the web stack: uvicorn, starlette, PyJWT and prometheus_client load only with the
modules that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy_exports import lazy_getattr

if TYPE_CHECKING:
    from .app import create_app
    from .backends import Backend, MemoryBackend, create_backend
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
    from .fanout.manager import ConnectionManager
    from .protocol import CloseCode
    from .wire.catalog import EventCatalog, load_catalogs

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
    "load_catalogs",
]

# Public name -> the module that defines it.
_MODULE_OF: dict[str, str] = {
    "Backend": ".backends",
    "BackendUnavailable": ".errors",
    "BadRequest": ".errors",
    "CloseCode": ".protocol",
    "ConnectionManager": ".fanout.manager",
    "EventCatalog": ".wire.catalog",
    "EventValidationError": ".errors",
    "Forbidden": ".errors",
    "Hub": ".core",
    "HubError": ".errors",
    "MemoryBackend": ".backends",
    "PayloadTooLarge": ".errors",
    "RateLimited": ".errors",
    "Settings": ".config",
    "Unauthorized": ".errors",
    "create_app": ".app",
    "create_backend": ".backends",
    "load_catalogs": ".wire.catalog",
}


__getattr__ = lazy_getattr(__name__, _MODULE_OF, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
