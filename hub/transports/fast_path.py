"""Which WebSocket protocol class uvicorn runs: the hub's direct-write adapter if it loads.

hub.transports.uvicorn_ws subclasses an undocumented uvicorn class. It is imported here, lazily,
and its view of uvicorn's internals checked; if either fails the hub logs one warning and serves
with uvicorn's stock protocol, where every socket takes the portable ASGI path (slower fan-out,
same behaviour on the wire).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging

import uvicorn.config

__all__ = ["STOCK_PROTOCOL", "websocket_protocol"]

logger = logging.getLogger("hub")

STOCK_PROTOCOL = "websockets-sansio"  # what the adapter subclasses, minus the fast path


@functools.cache  # one import attempt and at most one warning per process
def websocket_protocol() -> type[asyncio.Protocol] | str:
    """The class (or uvicorn's name for one) to pass as uvicorn's `ws` option."""
    try:
        adapter = importlib.import_module("hub.transports.uvicorn_ws")
        adapter.check_internals()
    except Exception as exc:  # an ImportError, an AttributeError or the check itself
        stock = getattr(uvicorn.config, "WS_PROTOCOLS", {})
        fallback = STOCK_PROTOCOL if STOCK_PROTOCOL in stock else "auto"
        logger.warning(
            "no fast path: the uvicorn adapter does not fit this uvicorn (%s: %s); "
            "serving WebSockets with uvicorn's %r protocol",
            type(exc).__name__,
            exc,
            fallback,
        )
        return fallback
    protocol: type[asyncio.Protocol] = adapter.HubWebSocketProtocol
    return protocol
