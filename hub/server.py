"""Run the hub's ASGI app on uvicorn with the fast WebSocket protocol and a clean drain.

On SIGTERM/SIGINT every subscriber first gets an error frame and close 1001 (reconnect with
since), then uvicorn stops; the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Generator
from typing import Any

import uvicorn
from starlette.applications import Starlette

from .config import Settings
from .core import Hub
from .uvicorn_ws import HubWebSocketProtocol

__all__ = ["HubServer", "serve", "uvicorn_config"]

logger = logging.getLogger("hub")


def uvicorn_config(
    app: Starlette, host: str, port: int, settings: Settings, **overrides: Any
) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "ws": HubWebSocketProtocol,
        "ws_max_size": settings.max_inbound_frame,
        "ws_per_message_deflate": False,  # no compression bombs, and frames stay shareable
        "ws_ping_interval": settings.heartbeat_s,
        "ws_ping_timeout": settings.heartbeat_s,
        "lifespan": "on",
        "access_log": False,  # the access log prints query strings, which may hold tokens
        "log_level": "info",
        "timeout_graceful_shutdown": settings.drain_timeout_s,
        "backlog": 4096,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


class HubServer(uvicorn.Server):
    """uvicorn.Server that drains subscribers with 1001 before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, *, install_signal_handlers: bool = True) -> None:
        super().__init__(config)
        self._install_signal_handlers = install_signal_handlers

    @property
    def hub(self) -> Hub:
        app = self.config.loaded_app
        while not isinstance(app, Starlette):  # unwrap uvicorn's middleware
            app = app.app
        hub: Hub = app.state.hub
        return hub

    @property
    def port(self) -> int:
        sockets = [s for server in self.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1])

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if not self._install_signal_handlers:
            yield
            return
        with super().capture_signals():
            try:
                yield
            finally:
                # uvicorn re-raises the captured signal on exit, which would turn a clean
                # drain into death by SIGTERM (exit status -15): the drain is the handling.
                self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drained = self.hub.drain()
        if drained:
            logger.info("closed %d subscriber(s) with 1001", drained)
            await asyncio.sleep(0)  # let close frames reach the transports
        await super().shutdown(sockets)


async def serve(app: Starlette, host: str, port: int, settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; print the address once listening."""
    server = HubServer(uvicorn_config(app, host, port, settings))
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        display = f"[{host}]" if ":" in host else host
        print(f"hub listening on http://{display}:{server.port}", flush=True)
    await task
    if not server.started:
        sys.exit(1)
