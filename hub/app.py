"""`create_app(settings, backend, catalog)`: the ASGI app, built from explicit pieces."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from .auth import AuthGate, Security, install_log_redaction
from .auth.open_mode import OpenModeGuard
from .auth.origins import HostPolicy
from .backends import create_backend
from .backends.base import Backend
from .config import Settings
from .core import Hub
from .dashboard import dashboard_routes
from .errors import HubError
from .limits import Limits
from .metrics import metrics_endpoint
from .transports import http_api, long_poll
from .transports.asyncapi_endpoint import asyncapi
from .transports.cors import CorsMiddleware
from .transports.sse_endpoint import sse_endpoint
from .transports.ws_endpoint import refuse, websocket_endpoint
from .wire.catalog import EventCatalog

__all__ = [
    "DASHBOARD_PATHS",
    "DASHBOARD_PREFIXES",
    "PUBLIC_PATHS",
    "LifespanHook",
    "create_app",
]

# With a secret, only these answer without a token (plus /metrics if settings.metrics_public,
# and the dashboard's page and scripts, which hold no data, if settings.dashboard_public).
PUBLIC_PATHS = ("/healthz", "/readyz")
DASHBOARD_PATHS = ("/", "/hub-client.js")
DASHBOARD_PREFIXES = ("/static/",)

logger = logging.getLogger("hub")

# Runs inside the app's lifespan with the started Hub (services start their workers here).
LifespanHook = Callable[[Hub], AbstractAsyncContextManager[None]]


def create_app(
    settings: Settings | None = None,
    *,
    backend: Backend | None = None,
    catalog: EventCatalog | None = None,
    routes: Sequence[BaseRoute] = (),
    lifespan_hooks: Sequence[LifespanHook] = (),
) -> Starlette:
    settings = settings or Settings()
    backend = backend or create_backend(settings)
    hub = Hub(settings, backend, catalog)  # no catalog: Hub loads settings.catalogs
    security = Security(settings)  # refuses secrets too short to be safe (ValueError)
    install_log_redaction()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not security.enabled:
            logger.warning(
                "no secret: the hub is OPEN to every client that can reach it (browser pages "
                "of other sites and other Host names are refused). Set HUB_SECRET or --secret."
            )
        await hub.start()
        try:
            async with contextlib.AsyncExitStack() as stack:
                for hook in lifespan_hooks:
                    await stack.enter_async_context(hook(hub))
                yield
        finally:
            await hub.stop()

    project_routes: list[BaseRoute] = [
        WebSocketRoute("/v1/projects/{project}/ws", websocket_endpoint),
        Route("/v1/projects/{project}/sse", sse_endpoint, methods=["GET"]),
        Route("/v1/projects/{project}/events", http_api.publish, methods=["POST"]),
        Route("/v1/projects/{project}/events", long_poll.events_get, methods=["GET"]),
        Route("/v1/projects/{project}/snapshot", http_api.snapshot, methods=["GET"]),
        Route("/v1/schema", http_api.schema, methods=["GET"]),
        Route("/v1/asyncapi.json", asyncapi, methods=["GET"]),
        Route("/healthz", http_api.healthz, methods=["GET"]),
        Route("/readyz", http_api.readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *dashboard_routes(),
    ]
    public = [
        *PUBLIC_PATHS,
        *(["/metrics"] if settings.metrics_public else []),
        *(DASHBOARD_PATHS if settings.dashboard_public else []),
    ]
    gate = Middleware(
        AuthGate,
        public_paths=public,
        public_prefixes=DASHBOARD_PREFIXES if settings.dashboard_public else (),
        http_refusal=http_api.error_response,
        ws_refusal=refuse,
    )
    # Open hub: no browser page of another site, no rebound DNS name (hub.auth.open_mode).
    guard = Middleware(
        OpenModeGuard,
        origins=security.origins,
        hosts=HostPolicy(settings.allowed_hosts),
        http_refusal=http_api.error_response,
        ws_refusal=refuse,
    )
    app = Starlette(
        routes=[*project_routes, *routes],
        middleware=[_cors(settings, security), *([gate] if security.enabled else [guard, gate])],
        lifespan=lifespan,
        exception_handlers={HubError: _hub_error_handler},
    )
    app.state.hub = hub
    app.state.security = security
    app.state.limits = Limits(settings)
    return app


def _cors(settings: Settings, security: Security) -> Middleware:
    """Outermost: a preflight carries no token, and refusals need CORS headers to be read."""
    return Middleware(
        CorsMiddleware,
        origins=security.origins,
        max_age_s=settings.cors_max_age_s,
        http_refusal=http_api.error_response,
    )


async def _hub_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HubError)
    return http_api.error_response(exc)
