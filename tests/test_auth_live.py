"""Tokens on a real hub: a token for one project reads and publishes nothing of another, on
every path; bad tokens get 4001/401, missing grants 4003/403; the `types` claim narrows what
is read; a token expiring mid-connection closes it; tokens never reach the log.

Every read path is one entry of READERS: a path added to the hub gets the same checks by
adding its reader there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import httpx
import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute
from uvicorn.logging import AccessFormatter
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hub.auth import mint_token
from hub.config import Settings

from .support import RunningHub, run_hub, wait_for

SECRET = "live-test-secret-that-is-32-bytes-or-more"
A, B = "acme-a", "beta-b"


def token_for(*projects: str, scopes: tuple[str, ...] = ("subscribe",), **kw: Any) -> str:
    return mint_token(
        SECRET, subject=kw.pop("subject", "alice"), projects=projects, scopes=scopes, **kw
    )


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture
async def secured() -> AsyncIterator[RunningHub]:
    async with run_hub(Settings(heartbeat_s=5.0, secret=SECRET)) as running:
        yield running


async def seed(running: RunningHub) -> dict[str, list[str]]:
    """Publish to A and B (keyed, so snapshots hold them); return each project's types."""
    hub = running.hub
    published: dict[str, list[str]] = {A: [], B: []}
    for i, event_type in enumerate(
        ["agent.run.created", "ingest.job.updated", "agent.step.updated", "workflow.run.updated"]
    ):
        for project in (A, B):
            await hub.publish(project, event_type, {"i": i}, key=f"k/{i}")
            published[project].append(event_type)
    return published


# --- readers: every path that can read a project -----------------------------------------


class Read(NamedTuple):
    status: int  # HTTP status, or the WebSocket close code (200 when the stream opened)
    events: list[dict[str, Any]]
    error: dict[str, Any] | None = None


def flatten(message: str | bytes) -> list[dict[str, Any]]:
    decoded = msgspec.json.decode(message)
    return decoded if isinstance(decoded, list) else [decoded]


async def read_ws(running: RunningHub, project: str, bearer: str | None, **query: Any) -> Read:
    """Replay everything retained (since=0), or the snapshot after a gap."""
    url = running.ws_url(project, since=query.pop("since", 0), **query)
    events: list[dict[str, Any]] = []
    error: dict[str, Any] | None = None
    async with connect(url, additional_headers=auth(bearer), max_size=None) as ws:
        while True:
            try:
                frames = flatten(await asyncio.wait_for(ws.recv(), 5))
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                return Read(exc.rcvd.code, events, error)
            for frame in frames:
                if frame["op"] == "event":
                    events.append(frame)
                elif frame["op"] == "snapshot":
                    return Read(200, frame["events"])
                elif frame["op"] == "replayed":
                    return Read(200, events)
                elif frame["op"] == "error":
                    error = frame


async def read_sse(running: RunningHub, project: str, bearer: str | None, **query: Any) -> Read:
    events: list[dict[str, Any]] = []
    params = {"since": 0, **query}
    async with (
        running.http() as http,
        http.stream(
            "GET", f"/v1/projects/{project}/sse", params=params, headers=auth(bearer)
        ) as response,
    ):
        if response.status_code != 200:
            await response.aread()
            return Read(response.status_code, [], response.json()["error"])
        block: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line:
                name, _, value = line.partition(": ")
                block[name] = value
                continue
            if block.get("event") == "replayed":
                return Read(200, events)
            if "data" in block and block.get("event") not in ("welcome", "gap"):
                data = msgspec.json.decode(block["data"])
                if block.get("event") == "snapshot":
                    return Read(200, data["events"])
                events.append(data)
            block = {}
    raise AssertionError("SSE stream ended before `replayed`")


async def read_history(running: RunningHub, project: str, bearer: str | None, **query: Any) -> Read:
    async with running.http() as http:
        response = await http.get(
            f"/v1/projects/{project}/events", params=query, headers=auth(bearer)
        )
    body = response.json()
    if response.status_code != 200:
        return Read(response.status_code, [], body["error"])
    return Read(200, body["events"])


async def read_snapshot(
    running: RunningHub, project: str, bearer: str | None, **query: Any
) -> Read:
    async with running.http() as http:
        response = await http.get(
            f"/v1/projects/{project}/snapshot", params=query, headers=auth(bearer)
        )
    body = response.json()
    if response.status_code != 200:
        return Read(response.status_code, [], body["error"])
    return Read(200, body["events"])


Reader = Callable[..., Awaitable[Read]]
READERS: dict[str, Reader] = {
    "ws": read_ws,
    "sse": read_sse,
    "history": read_history,
    "snapshot": read_snapshot,
}
ROUTES = {
    "ws": "/v1/projects/{project}/ws",
    "sse": "/v1/projects/{project}/sse",
    "history": "/v1/projects/{project}/events",
    "snapshot": "/v1/projects/{project}/snapshot",
}
UNAUTHORIZED = {"ws": 4001, "sse": 401, "history": 401, "snapshot": 401}
FORBIDDEN = {"ws": 4003, "sse": 403, "history": 403, "snapshot": 403}


def starlette_app(running: RunningHub) -> Starlette:
    return running.app


def served(running: RunningHub) -> dict[str, Reader]:
    """The readers whose path this build of the hub serves (SSE may not exist yet)."""
    paths = {getattr(route, "path", None) for route in starlette_app(running).routes}
    return {name: read for name, read in READERS.items() if ROUTES[name] in paths}


def reader(running: RunningHub, path: str) -> Reader:
    read = served(running).get(path)
    if read is None:
        pytest.fail(f"this hub serves no {path} path")
    return read


async def publish(
    running: RunningHub, project: str, token: str | None, body: Any = None
) -> httpx.Response:
    body = body if body is not None else {"type": "agent.run.created", "data": {}}
    async with running.http() as http:
        return await http.post(f"/v1/projects/{project}/events", json=body, headers=auth(token))


# --- isolation ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", READERS)
async def test_a_token_for_one_project_reads_all_of_it_and_nothing_of_another(
    secured: RunningHub, path: str
) -> None:
    published = await seed(secured)
    token = token_for(A)
    read = reader(secured, path)
    own = await read(secured, A, token)
    assert own.status == 200
    assert {e["project"] for e in own.events} == {A}
    assert sorted(e["type"] for e in own.events) == sorted(published[A])

    other = await read(secured, B, token)
    assert other.status == FORBIDDEN[path]
    assert other.events == []
    assert other.error is not None and other.error["code"] == "forbidden"


@pytest.mark.parametrize("path", READERS)
async def test_a_project_pattern_grants_matching_projects_only(
    secured: RunningHub, path: str
) -> None:
    await seed(secured)
    token = token_for("acme-*")
    read = reader(secured, path)
    assert (await read(secured, A, token)).status == 200
    assert (await read(secured, B, token)).status == FORBIDDEN[path]


async def test_a_live_subscriber_gets_its_project_and_never_the_others(
    secured: RunningHub,
) -> None:
    received: list[dict[str, Any]] = []
    async with connect(secured.ws_url(A), additional_headers=auth(token_for(A))) as ws:

        async def record() -> None:
            async for message in ws:
                received.extend(f for f in flatten(message) if f["op"] == "event")

        task = asyncio.create_task(record())
        await wait_for(lambda: secured.hub.manager.project_connection_count(A) == 1)
        await seed(secured)
        await wait_for(lambda: len(received) == 4, what="A's four events")
        await secured.hub.publish(B, "agent.run.created", {})
        await secured.hub.publish(A, "agent.run.failed", {})
        await wait_for(lambda: len(received) == 5, what="A's fifth event")
        assert [e["project"] for e in received] == [A] * 5
        assert [e["seq"] for e in received] == [1, 2, 3, 4, 5]
        await ws.close()
        await task


async def test_a_token_cannot_publish_to_a_project_it_was_not_granted(
    secured: RunningHub,
) -> None:
    token = token_for(A, scopes=("subscribe", "publish"))
    response = await publish(secured, B, token)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert (await secured.hub.backend.position(B)).head == 0
    response = await publish(secured, A, token)
    assert response.status_code == 202 and response.json() == {"seqs": [1]}


async def test_scopes_are_enforced_on_each_path(secured: RunningHub) -> None:
    reader, writer = token_for(A), token_for(A, scopes=("publish",))
    response = await publish(secured, A, reader)
    assert response.status_code == 403
    assert "'publish' scope" in response.json()["error"]["message"]
    for path, read in served(secured).items():
        result = await read(secured, A, writer)
        assert result.status == FORBIDDEN[path], path
        assert result.error is not None and "'subscribe' scope" in result.error["message"]


# --- refused tokens ----------------------------------------------------------------------


def expired() -> str:
    return token_for(A, scopes=("subscribe", "publish"), ttl_s=-10)


def forged() -> str:
    return mint_token(
        "an-attackers-own-secret-of-32-bytes!",
        subject="x",
        projects=["*"],
        scopes=("subscribe", "publish"),
    )


def alg_none() -> str:
    claims = {
        "sub": "x",
        "exp": int(time.time()) + 600,
        "projects": ["*"],
        "scope": ["subscribe", "publish"],
    }
    return jwt.encode(claims, None, algorithm="none")


def wrong_hmac() -> str:
    claims = {
        "sub": "x",
        "exp": int(time.time()) + 600,
        "projects": ["*"],
        "scope": ["subscribe", "publish"],
    }
    return jwt.encode(claims, SECRET + SECRET, algorithm="HS512")


def wrong_asymmetric() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {
        "sub": "x",
        "exp": int(time.time()) + 600,
        "projects": ["*"],
        "scope": ["subscribe", "publish"],
    }
    return jwt.encode(claims, key, algorithm="RS256")


def missing() -> None:
    return None


BAD_TOKENS: list[Callable[[], str | None]] = [
    missing,
    expired,
    forged,
    alg_none,
    wrong_hmac,
    wrong_asymmetric,
]


@pytest.mark.parametrize("make_token", BAD_TOKENS, ids=lambda f: f.__name__)
async def test_bad_tokens_are_refused_on_every_path(
    secured: RunningHub, make_token: Callable[[], str | None]
) -> None:
    await seed(secured)
    token = make_token()
    for path, read in served(secured).items():
        result = await read(secured, A, token)
        assert result.status == UNAUTHORIZED[path], path
        assert result.events == []
        assert result.error is not None and result.error["code"] == "unauthorized"
    response = await publish(secured, A, token)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert (await secured.hub.backend.position(A)).head == 4


async def test_a_refused_socket_gets_an_error_frame_before_4001(secured: RunningHub) -> None:
    async with connect(secured.ws_url(A), additional_headers=auth(expired())) as ws:
        error = flatten(await asyncio.wait_for(ws.recv(), 5))[0]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert error == {
        "op": "error",
        "code": "unauthorized",
        "message": "token expired",
        "retryable": False,
        "close": 4001,
    }
    assert ws.close_code == 4001


async def test_the_token_query_parameter_works_for_browsers(secured: RunningHub) -> None:
    await seed(secured)
    token = token_for(A)
    url = secured.ws_url(A, since=0, token=token)
    async with connect(url) as ws:
        frames: list[dict[str, Any]] = []
        while not any(f["op"] == "replayed" for f in frames):
            frames.extend(flatten(await asyncio.wait_for(ws.recv(), 5)))
    assert len([f for f in frames if f["op"] == "event"]) == 4
    result = await read_history(secured, A, None, token=token)
    assert result.status == 200 and len(result.events) == 4


# --- what is open ------------------------------------------------------------------------


def every_path(app: Starlette) -> list[tuple[str, str]]:
    """(kind, concrete path) for every route, with path parameters filled in."""
    found = []
    for route in app.routes:
        if isinstance(route, Mount):
            found.append(("http:GET", route.path + "/anything"))
        elif isinstance(route, Route | WebSocketRoute):
            path = route.path.replace("{project}", A)
            kind = "ws" if isinstance(route, WebSocketRoute) else "http"
            methods = sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"})
            found.extend((f"{kind}:{m}" if kind == "http" else kind, path) for m in methods)
    return found


async def test_with_a_secret_only_health_is_open(secured: RunningHub) -> None:
    paths = every_path(starlette_app(secured))
    assert ("http:GET", "/healthz") in paths and ("ws", f"/v1/projects/{A}/ws") in paths
    async with secured.http() as http:
        for kind, path in paths:
            if kind == "ws":
                async with connect(f"ws://127.0.0.1:{secured.port}{path}") as ws:
                    [error] = flatten(await asyncio.wait_for(ws.recv(), 5))
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), 5)
                    assert (ws.close_code, error["close"]) == (4001, 4001), path
                continue
            method = kind.split(":")[1]
            response = await http.request(method, path)
            if path in ("/healthz", "/readyz"):
                assert response.status_code == 200, path
            else:
                assert response.status_code == 401, (method, path)
                assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.hub_settings(heartbeat_s=5.0, secret=SECRET, metrics_public=True)
async def test_metrics_are_open_only_when_configured(running_hub: RunningHub) -> None:
    async with running_hub.http() as http:
        if "/metrics" not in {getattr(r, "path", None) for r in starlette_app(running_hub).routes}:
            pytest.fail("this hub serves no /metrics")
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/v1/schema")).status_code == 401
        response = await http.get("/v1/schema", headers=auth(token_for(A)))
        assert response.status_code == 200


@pytest.mark.hub_settings(heartbeat_s=5.0, secret=SECRET, dashboard_public=True)
async def test_the_dashboard_page_can_be_opened_without_its_data(running_hub: RunningHub) -> None:
    async with running_hub.http() as http:
        paths = {getattr(r, "path", None) for r in starlette_app(running_hub).routes}
        if "/hub-client.js" not in paths:
            pytest.fail("this hub serves no dashboard")
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/hub-client.js")).status_code == 200
        assert (await http.get("/static/no-such-file.js")).status_code == 404
        for path in ("/v1/schema", "/metrics", f"/v1/projects/{A}/events"):
            assert (await http.get(path)).status_code == 401, path


async def test_an_open_hub_says_so_loudly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hub")
    async with run_hub(Settings(heartbeat_s=5.0)) as running:
        result = await read_history(running, A, None)
        assert result.status == 200
    assert any("OPEN" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


async def test_a_secret_too_short_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        async with run_hub(Settings(secret="short")):
            pass


# --- the types claim ---------------------------------------------------------------------


@pytest.mark.parametrize("path", READERS)
async def test_the_types_claim_limits_what_every_path_reads(secured: RunningHub, path: str) -> None:
    await seed(secured)
    token = token_for(A, types=["agent.*"])
    read = reader(secured, path)
    result = await read(secured, A, token)
    assert result.status == 200
    assert [e["type"] for e in result.events] == ["agent.run.created", "agent.step.updated"]
    narrowed = await read(secured, A, token, types="*.updated")
    assert [e["type"] for e in narrowed.events] == ["agent.step.updated"]


async def test_the_types_claim_limits_a_gap_snapshot_and_live_events(
    secured: RunningHub,
) -> None:
    await seed(secured)
    token = token_for(A, types=["agent.*"])
    gap = await read_ws(secured, A, token, since=99)  # ahead of head: gap + snapshot
    assert [e["type"] for e in gap.events] == ["agent.run.created", "agent.step.updated"]

    frames: list[dict[str, Any]] = []
    async with connect(secured.ws_url(A), additional_headers=auth(token)) as ws:

        async def record() -> None:
            async for message in ws:
                frames.extend(flatten(message))

        task = asyncio.create_task(record())
        # a subscribe op cannot widen the grant either
        await ws.send('{"op":"subscribe","id":1,"types":["ingest.*","agent.run.*"]}')
        await wait_for(lambda: any(f["op"] == "subscribed" for f in frames), what="subscribed")
        for event_type in ("ingest.job.updated", "agent.step.updated", "agent.run.failed"):
            await secured.hub.publish(A, event_type, {})
        await secured.hub.publish(A, "agent.run.created", {})
        await wait_for(lambda: frames[-1].get("seq") == 8, what="the last event")
        assert [f["type"] for f in frames if f["op"] == "event"] == [
            "agent.run.failed",
            "agent.run.created",
        ]
        await ws.close()
        await task


# --- expiry while connected --------------------------------------------------------------


async def test_a_token_expiring_while_connected_closes_the_socket_with_4001(
    secured: RunningHub,
) -> None:
    short = token_for(A, ttl_s=2)
    frames: list[dict[str, Any]] = []
    started = time.monotonic()
    async with connect(secured.ws_url(A), additional_headers=auth(short)) as ws:
        with pytest.raises(ConnectionClosed) as info:
            while True:
                frames.extend(flatten(await asyncio.wait_for(ws.recv(), 5)))
    elapsed = time.monotonic() - started
    assert info.value.rcvd is not None and info.value.rcvd.code == 4001
    assert frames[0]["op"] == "welcome"
    assert frames[-1] == {
        "op": "error",
        "code": "unauthorized",
        "message": "token expired; reconnect with a new one",
        "retryable": False,
        "close": 4001,
    }
    assert elapsed < 4
    await wait_for(lambda: secured.hub.manager.connection_count == 0, what="removed")


async def test_the_expiry_timer_goes_with_the_connection(secured: RunningHub) -> None:
    loop = asyncio.get_running_loop()
    async with connect(secured.ws_url(A), additional_headers=auth(token_for(A, ttl_s=3000))):
        await wait_for(lambda: secured.hub.manager.connection_count == 1)
    await wait_for(lambda: secured.hub.manager.connection_count == 0)
    scheduled = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    assert not [h for h in scheduled if h.when() > loop.time() + 2000], "timer left behind"


# --- Origin ------------------------------------------------------------------------------


async def ws_close_code(url: str, **options: Any) -> tuple[int | None, list[dict[str, Any]]]:
    """Connect, read until closed (or the welcome); return (close code or None, frames)."""
    frames: list[dict[str, Any]] = []
    async with connect(url, **options) as ws:
        try:
            while True:
                frames.extend(flatten(await asyncio.wait_for(ws.recv(), 5)))
                if frames[-1]["op"] == "welcome":
                    return None, frames
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, frames


async def test_a_page_from_another_site_is_refused_with_1008(running_hub: RunningHub) -> None:
    url = running_hub.ws_url(A)
    code, frames = await ws_close_code(url, origin="https://evil.example")
    assert code == 1008
    assert frames[-1]["code"] == "origin" and frames[-1]["close"] == 1008
    code, frames = await ws_close_code(url, origin=f"http://127.0.0.1:{running_hub.port}")
    assert code is None and [f["op"] for f in frames] == ["welcome"]


async def test_clients_without_origin_are_not_browsers_and_pass(running_hub: RunningHub) -> None:
    code, frames = await ws_close_code(running_hub.ws_url(A))
    assert code is None and frames[0]["op"] == "welcome"


@pytest.mark.hub_settings(heartbeat_s=5.0, allowed_origins="https://app.example.com")
async def test_an_origin_allowlist_admits_the_listed_sites(running_hub: RunningHub) -> None:
    url = running_hub.ws_url(A)
    assert (await ws_close_code(url, origin="https://app.example.com"))[0] is None
    assert (await ws_close_code(url, origin=f"http://127.0.0.1:{running_hub.port}"))[0] == 1008


async def test_origin_is_checked_before_the_token(secured: RunningHub) -> None:
    code, _ = await ws_close_code(
        secured.ws_url(A), origin="https://evil.example", additional_headers=auth(token_for(A))
    )
    assert code == 1008


# --- logs --------------------------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # uvicorn's access formatter reads the record's arguments: redaction must keep them
        formatter = ACCESS_FORMAT if record.name == "uvicorn.access" else logging.Formatter()
        self.lines.append(formatter.format(record))


ACCESS_FORMAT = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s')


async def test_tokens_never_reach_the_log() -> None:
    collector = Collect()
    loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    settings = Settings(heartbeat_s=5.0, secret=SECRET)
    async with run_hub(settings, log_level="debug", access_log=True) as running:
        for target in loggers:
            target.addHandler(collector)
        try:
            token = token_for(A)
            async with connect(running.ws_url(A, token=token)) as ws:
                await asyncio.wait_for(ws.recv(), 5)
            async with connect(running.ws_url(A, token="not-a-valid-token")) as ws:
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ws.recv(), 5)
            assert (await read_history(running, A, None, token=token)).status == 200
            await wait_for(lambda: any("[redacted]" in line for line in collector.lines))
        finally:
            for target in loggers:
                target.removeHandler(collector)
    text = "\n".join(collector.lines)
    assert token not in text and "not-a-valid-token" not in text
    assert "token=[redacted]" in text
    assert f'"GET /v1/projects/{A}/events?token=[redacted] HTTP/1.1" 200' in text
