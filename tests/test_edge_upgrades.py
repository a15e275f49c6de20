"""Every connection is answered or closed within the handshake deadline, whatever it sends
(issue 10, part 4), and a request head over max_request_head is refused even in one write."""

from __future__ import annotations

import asyncio

import pytest
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from hub.config import Settings

from .edge_support import capture_logs, control_subscriber, exchange, status_of, upgrade_head
from .support import run_hub

DEADLINE = 1.0
SETTINGS = Settings(heartbeat_s=5.0, handshake_timeout_s=DEADLINE)

MALFORMED_UPGRADES = {
    "query over 8 KiB": (upgrade_head(b"/v1/projects/p/ws?x=" + b"a" * 8300), 414),
    "129 headers": (upgrade_head(extra=b"".join(b"X-%d: 1\r\n" % i for i in range(129))), 431),
    "header over 8 KiB": (upgrade_head(extra=b"X-Big: " + b"b" * 8300 + b"\r\n"), 431),
    "content-length": (upgrade_head(extra=b"Content-Length: 5\r\n") + b"hello", 400),
    "transfer-encoding": (
        upgrade_head(extra=b"Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n",
        400,
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED_UPGRADES))
async def test_a_malformed_upgrade_is_refused_with_a_status_and_closed(name: str) -> None:
    request, status = MALFORMED_UPGRADES[name]
    async with run_hub(SETTINGS, log_level="info") as running:
        with capture_logs() as logs:
            async with control_subscriber(running) as control:
                response, took = await exchange(running.port, request, timeout=DEADLINE + 5)
                await control.publish(3)
                await control.check()
    assert status_of(response) == status, response[:200]
    assert b'"message":"invalid WebSocket upgrade: ' in response
    assert took < DEADLINE + 3
    assert logs.tracebacks() == []


async def test_many_malformed_upgrades_at_once_are_all_refused() -> None:
    requests = [r for r, _ in MALFORMED_UPGRADES.values()] * 20
    async with run_hub(SETTINGS) as running:
        async with control_subscriber(running) as control:
            results = await asyncio.gather(
                *(exchange(running.port, r, timeout=DEADLINE + 5) for r in requests)
            )
            await control.publish(3)
        assert all(status_of(response) in (400, 414, 431) for response, _ in results)
        assert running.hub.manager.connection_count == 0
        del control


async def _never_accepts(websocket: WebSocket) -> None:
    await asyncio.Event().wait()


async def test_an_upgrade_the_app_never_accepts_is_closed_at_the_deadline() -> None:
    # The deadline stays armed after h11 hands the socket to the WebSocket protocol.
    routes = [WebSocketRoute("/stalled", _never_accepts)]
    async with run_hub(SETTINGS, routes=routes, log_level="info") as running:
        with capture_logs() as logs:
            async with control_subscriber(running) as control:
                response, took = await exchange(
                    running.port, upgrade_head(b"/stalled"), timeout=DEADLINE + 5
                )
                await control.publish(2)
    assert response == b""
    assert DEADLINE - 0.2 < took < DEADLINE + 3
    assert "no WebSocket handshake within" in logs.text
    assert logs.tracebacks() == []


@pytest.mark.parametrize("kib", [20, 60, 200])
@pytest.mark.parametrize("upgrade", [False, True], ids=["http", "upgrade"])
async def test_a_head_over_max_request_head_in_one_write_is_refused(
    kib: int, upgrade: bool
) -> None:
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"c" * 1000) for i in range(kib))
    if upgrade:
        request = upgrade_head(extra=headers)
    else:
        request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n"
    async with run_hub(SETTINGS) as running:
        with capture_logs() as logs:
            async with control_subscriber(running) as control:
                response, took = await exchange(running.port, request, timeout=DEADLINE + 5)
                await control.publish(2)
    assert status_of(response) in (400, 431), response[:200]
    assert took < DEADLINE + 3
    assert logs.tracebacks() == []


async def test_a_head_just_under_max_request_head_is_served() -> None:
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"c" * 1000) for i in range(14))
    request = (
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" + headers + b"\r\n"
    )
    async with run_hub(SETTINGS) as running:
        response, _ = await exchange(running.port, request, timeout=5)
    assert status_of(response) == 200, response[:200]
