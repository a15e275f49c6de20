"""CORS over HTTP (docs/security.md, "CORS"): preflights answered before the auth gate, the
allowed origin echoed (never `*`, never with credentials), other origins get nothing, on the
hub's routes and on routes mounted beside them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hub.auth import mint_token
from hub.config import Settings

from .support import RunningHub, run_hub, wait_for

SECRET = "cors-test-secret-that-is-32-bytes-or-more"
APP = "http://app.example.com"
OTHER = "http://evil.example.net"
PREFLIGHT = {"Access-Control-Request-Method": "POST"}


async def _service_route(request: Request) -> JSONResponse:
    return JSONResponse({"project": request.path_params["project"]})


SERVICE = Route("/v1/projects/{project}/things", _service_route, methods=["GET", "POST"])


@pytest.fixture
async def secured() -> AsyncIterator[RunningHub]:
    settings = Settings(
        heartbeat_s=5.0,
        secret=SECRET,
        allowed_origins=f"{APP},https://*.example.org",
        cors_max_age_s=120,
    )
    async with run_hub(settings, routes=[SERVICE]) as running:
        yield running


def bearer(*scopes: str) -> dict[str, str]:
    token = mint_token(SECRET, subject="page", projects=["p1"], scopes=scopes)
    return {"Authorization": f"Bearer {token}"}


def assert_cors(response: httpx.Response, origin: str) -> None:
    assert response.headers["access-control-allow-origin"] == origin
    assert "Origin" in response.headers["vary"]
    assert "access-control-allow-credentials" not in response.headers


def assert_no_cors(response: httpx.Response) -> None:
    assert not [h for h in response.headers if h.startswith("access-control-")], response.headers
    assert "Origin" in response.headers["vary"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/projects/p1/events",
        "/v1/projects/p1/snapshot",
        "/v1/projects/p1/sse",
        "/v1/projects/p1/things",
        "/v1/schema",
        "/hub-client.js",
    ],
)
async def test_a_preflight_from_an_allowed_origin_is_answered_without_a_token(
    secured: RunningHub, path: str
) -> None:
    headers = {
        "Origin": APP,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,last-event-id",
    }
    async with secured.http() as http:
        response = await http.options(path, headers=headers)
    assert response.status_code == 204, response.text
    assert_cors(response, APP)
    assert response.headers["access-control-allow-methods"] == "GET, HEAD, POST"
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "last-event-id"} <= allowed
    assert response.headers["access-control-max-age"] == "120"


async def test_a_preflight_from_another_origin_gets_403_with_a_json_message(
    secured: RunningHub,
) -> None:
    async with secured.http() as http:
        response = await http.options(
            "/v1/projects/p1/events", headers={"Origin": OTHER, **PREFLIGHT}
        )
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "origin" and OTHER in error["message"]
    assert "allowed_origins" in error["message"]
    assert_no_cors(response)


async def test_origins_match_the_websocket_allowlist_patterns(secured: RunningHub) -> None:
    async with secured.http() as http:
        for origin, status in [
            ("https://shop.example.org", 204),
            ("http://shop.example.org", 403),  # the pattern names https
            ("http://app.example.com:8080", 403),  # another port is another origin
            ("null", 403),
        ]:
            response = await http.options("/v1/schema", headers={"Origin": origin, **PREFLIGHT})
            assert response.status_code == status, origin


async def test_answers_to_an_allowed_origin_carry_cors_headers_and_expose_retry_after(
    secured: RunningHub,
) -> None:
    async with secured.http() as http:
        published = await http.post(
            "/v1/projects/p1/events",
            json={"type": "a.b", "data": {}},
            headers={"Origin": APP, **bearer("publish")},
        )
        page = await http.get(
            "/v1/projects/p1/events", headers={"Origin": APP, **bearer("subscribe")}
        )
        service = await http.get(
            "/v1/projects/p1/things", headers={"Origin": APP, **bearer("subscribe")}
        )
        refused = await http.get("/v1/projects/p1/events", headers={"Origin": APP})
    assert published.status_code == 202 and page.status_code == 200, page.text
    assert service.json() == {"project": "p1"}
    for response in (published, page, service):
        assert_cors(response, APP)
        assert response.headers["access-control-expose-headers"] == "Retry-After, WWW-Authenticate"
    # The gate's 401 is readable by the page too: it can tell a missing token from a network error.
    assert refused.status_code == 401
    assert_cors(refused, APP)
    assert refused.json()["error"]["code"] == "unauthorized"


async def test_answers_to_another_origin_carry_no_cors_headers(secured: RunningHub) -> None:
    async with secured.http() as http:
        response = await http.get(
            "/v1/projects/p1/events", headers={"Origin": OTHER, **bearer("subscribe")}
        )
        plain = await http.get("/v1/projects/p1/events", headers=bearer("subscribe"))
    assert response.status_code == 200  # served, but the browser keeps it from the page
    assert_no_cors(response)
    assert_no_cors(plain)  # no Origin: not a browser page, nothing to add but Vary


@pytest.mark.hub_settings(heartbeat_s=5.0, max_long_polls=1, allowed_origins="*")
async def test_any_origin_is_echoed_never_a_star_and_503_exposes_retry_after(
    running_hub: RunningHub,
) -> None:
    origin = "http://127.0.0.1:9"
    async with running_hub.http() as http:
        waiting = asyncio.create_task(http.get("/v1/projects/p1/events?wait=30"))
        await wait_for(lambda: running_hub.hub.manager.polls.count == 1)
        refused = await http.get("/v1/projects/p1/events?wait=30", headers={"Origin": origin})
        await running_hub.hub.publish("p1", "a.b", {})
        assert (await waiting).status_code == 200
    assert refused.status_code == 503
    assert_cors(refused, origin)
    assert refused.headers["retry-after"] == "1"
    assert "Retry-After" in refused.headers["access-control-expose-headers"]


async def test_by_default_only_the_hubs_own_origin_is_allowed(running_hub: RunningHub) -> None:
    own = running_hub.url
    async with running_hub.http() as http:
        same = await http.options("/v1/schema", headers={"Origin": own, **PREFLIGHT})
        other = await http.options("/v1/schema", headers={"Origin": OTHER, **PREFLIGHT})
        # An open hub refuses the request itself from another origin (hub.auth.open_mode).
        answer = await http.get("/v1/schema", headers={"Origin": OTHER})
    assert same.status_code == 204 and same.headers["access-control-allow-origin"] == own
    assert other.status_code == 403
    assert answer.status_code == 403
    assert_no_cors(answer)


async def test_an_options_request_that_is_not_a_preflight_reaches_the_routes(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        response = await http.options("/v1/schema", headers={"Origin": running_hub.url})
    assert response.status_code == 405
    assert_cors(response, running_hub.url)


async def test_websockets_are_not_touched(running_hub: RunningHub) -> None:
    from websockets.asyncio.client import connect

    async with connect(running_hub.ws_url("p1"), origin=running_hub.url) as ws:  # type: ignore[arg-type]
        welcome: Any = await asyncio.wait_for(ws.recv(), 5)
    assert '"welcome"' in welcome
