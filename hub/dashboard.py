"""The browser side served by the hub: the live dashboard at `/`, `hub-client.js`, `/static`.

Plain files from `hub/static/` (no build step); the dashboard's modules (`dashboard*.js`)
import `/hub-client.js`. Routes inside the page (`#/agent/<id>`...) are fragments: one HTML
page. The hub's Python knows no event type; the dashboard's scripts are the one place under
`hub/` that know the demo services' (dashboard-model.js) and their HTTP API
(dashboard-actions.js).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "dashboard_routes"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_NO_CACHE = {"cache-control": "no-cache"}  # revalidate: a hub upgrade shows at once


async def _index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=_NO_CACHE, media_type="text/html")


async def _client_script(request: Request) -> Response:
    return FileResponse(
        STATIC_DIR / "hub-client.js", headers=_NO_CACHE, media_type="text/javascript"
    )


def dashboard_routes() -> list[BaseRoute]:
    return [
        Route("/", _index, methods=["GET", "HEAD"]),
        Route("/hub-client.js", _client_script, methods=["GET", "HEAD"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
