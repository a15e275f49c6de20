"""`GET /v1/asyncapi.json`: the AsyncAPI 3.0 document of this hub (hub.asyncapi builds it).

Built from the catalog as it is now (services may register types after startup), with
`servers` at the Host the client used. Building takes milliseconds, so the document is kept
per catalog until its types change; only `servers` is made per request (the Host header is
the client's to choose, so it must not be what a cache is keyed by).
"""

from __future__ import annotations

import weakref
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..asyncapi import asyncapi_document, asyncapi_servers
from ..core import Hub
from ..wire.catalog import EventCatalog
from .http_api import json_response

__all__ = ["asyncapi"]

# catalog -> (its types and auth when built, the document)
_built: weakref.WeakKeyDictionary[EventCatalog, tuple[tuple[Any, ...], dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


async def asyncapi(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    auth: bool = request.app.state.security.enabled
    version = (tuple(hub.catalog.types()), auth)
    built = _built.get(hub.catalog)
    if built is None or built[0] != version:
        built = (version, asyncapi_document(hub.catalog, auth=auth))
        _built[hub.catalog] = built
    host = request.url.netloc or "localhost"
    servers = asyncapi_servers(host, secure=request.url.scheme == "https", auth=auth)
    response = json_response({**built[1], "servers": servers})
    response.headers["Vary"] = "Host"  # `servers` names the Host asked: a cache must key on it
    return response
