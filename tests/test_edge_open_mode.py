"""An open hub (no secret) answers local clients and its own pages only: no page of another
site, no DNS-rebound name (issue 10, part 6). A secret that parses to nothing is an error."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hub.auth.origins import HostPolicy, is_loopback_host
from hub.cli import build_parser, settings_from_args
from hub.cli_exit import run_command
from hub.config import Settings

from .edge_support import capture_logs, control_subscriber, hub_process
from .support import RunningHub, run_hub

SETTINGS = Settings(heartbeat_s=5.0)
EVIL = "https://evil.example"

# Every route a page could aim at: method, path, body, content type.
ROUTES: list[tuple[str, str, bytes | None, str | None]] = [
    ("POST", "/v1/projects/p/events", b'{"type":"rt.test.event","data":1}', "text/plain"),
    ("POST", "/v1/projects/p/events", b'{"type":"rt.test.event","data":1}', "application/json"),
    ("GET", "/v1/projects/p/events?since=0", None, None),
    ("GET", "/v1/projects/p/snapshot", None, None),
    ("GET", "/v1/projects/p/sse", None, None),
    ("GET", "/v1/schema", None, None),
    ("GET", "/metrics", None, None),
    ("GET", "/", None, None),
    ("GET", "/healthz", None, None),
]


async def request(
    running: RunningHub,
    method: str,
    path: str,
    body: bytes | None,
    ctype: str | None,
    **headers: str,
) -> httpx.Response:
    if ctype is not None:
        headers["content-type"] = ctype
    async with httpx.AsyncClient(base_url=running.url, timeout=5) as http:
        if path.endswith("/sse"):  # a refusal is a plain response; a stream is just opened
            async with http.stream(method, path, headers=headers) as response:
                await response.aclose()
                return response
        return await http.request(method, path, content=body, headers=headers)


@contextlib.asynccontextmanager
async def ws(
    running: RunningHub, host: str | None = None, **kw: Any
) -> AsyncIterator[ClientConnection]:
    url = f"ws://{host or f'127.0.0.1:{running.port}'}/v1/projects/p/ws"
    async with connect(url, host="127.0.0.1", port=running.port, open_timeout=5, **kw) as socket:
        yield socket


async def refusal(socket: ClientConnection) -> tuple[dict[str, Any], int | None]:
    """The error frame and the close code a refused socket gets."""
    frame = msgspec.json.decode(await socket.recv())
    with pytest.raises(ConnectionClosed) as closed:
        await socket.recv()
    rcvd = closed.value.rcvd
    return frame, rcvd.code if rcvd is not None else None


@pytest.mark.parametrize(
    "origin", [EVIL, "null", "http://127.0.0.1:1", "http://localhost.evil.example"]
)
async def test_a_foreign_origin_is_refused_on_every_route(origin: str) -> None:
    async with run_hub(SETTINGS) as running, control_subscriber(running) as control:
        with capture_logs() as logs:
            for method, path, body, ctype in ROUTES:
                response = await request(running, method, path, body, ctype, origin=origin)
                assert response.status_code == 403, (path, response.text)
                if not path.endswith("/sse"):
                    assert response.json()["error"]["code"] == "origin", response.text
                await control.publish()
            async with ws(running, origin=origin) as socket:  # type: ignore[arg-type]
                frame, code = await refusal(socket)
            assert (frame["code"], code) == ("origin", 1008)
            assert (await running.hub.backend.position("p")).head == 0  # nothing was published
    assert logs.tracebacks() == []


@pytest.mark.parametrize("host", ["evil.example", "hub.internal", "127.0.0.1.nip.io", "[::2]"])
@pytest.mark.hub_settings(SETTINGS)
async def test_a_non_loopback_host_is_refused_on_loopback_dns_rebinding(
    running_hub: RunningHub, host: str
) -> None:
    async with control_subscriber(running_hub) as control:
        named = f"{host}:{running_hub.port}"
        same_origin = {"host": named, "origin": f"http://{named}"}
        for method, path, body, ctype in ROUTES:
            for headers in ({"host": named}, same_origin):
                response = await request(running_hub, method, path, body, ctype, **headers)
                assert response.status_code == 403, (path, headers, response.text)
            await control.publish()
        async with ws(running_hub, named, origin=f"http://{named}") as socket:  # type: ignore[arg-type]
            frame, code = await refusal(socket)
        assert (frame["code"], code) == ("host", 1008)
        assert (await running_hub.hub.backend.position("p")).head == 0


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.1.2.3", "[::1]", "app.localhost"])
@pytest.mark.hub_settings(SETTINGS)
async def test_loopback_names_and_the_hubs_own_pages_are_served(
    running_hub: RunningHub, host: str
) -> None:
    named = f"{host}:{running_hub.port}"
    for headers in ({"host": named}, {"host": named, "origin": f"http://{named}"}):
        response = await request(running_hub, *ROUTES[0], **headers)
        assert response.status_code == 202, response.text
        history = await request(running_hub, *ROUTES[2], **headers)
        assert history.status_code == 200, history.text
    async with ws(running_hub, named, origin=f"http://{named}") as socket:  # type: ignore[arg-type]
        welcome = msgspec.json.decode(await socket.recv())
    assert welcome["op"] == "welcome"


@pytest.mark.hub_settings(SETTINGS)
async def test_clients_without_origin_are_served(running_hub: RunningHub) -> None:
    response = await request(running_hub, *ROUTES[0])  # what curl sends
    assert response.status_code == 202
    async with ws(running_hub) as socket:
        assert msgspec.json.decode(await socket.recv())["op"] == "welcome"


@pytest.mark.hub_settings(
    SETTINGS.replace(allowed_hosts="hub.lan,*.corp.example", allowed_origins=EVIL)
)
async def test_allowed_hosts_and_allowed_origins_widen_the_rules(running_hub: RunningHub) -> None:
    for host in ("hub.lan", "a.corp.example"):
        named = f"{host}:{running_hub.port}"
        same_origin = await request(running_hub, *ROUTES[2], host=named, origin=f"http://{named}")
        assert same_origin.status_code == 403  # an explicit origin list replaces "own host"
        listed = await request(running_hub, *ROUTES[2], host=named, origin=EVIL)
        assert listed.status_code == 200, listed.text
    refused = await request(running_hub, *ROUTES[2], host=f"other.example:{running_hub.port}")
    assert refused.status_code == 403


@pytest.mark.hub_settings(SETTINGS.replace(secret="s" * 40))
async def test_a_hub_with_a_secret_leaves_origins_to_tokens(running_hub: RunningHub) -> None:
    response = await request(running_hub, "GET", "/healthz", None, None, host="evil.example")
    assert response.status_code == 200


def test_host_rules() -> None:
    assert is_loopback_host("LOCALHOST.") and is_loopback_host("[::1]")
    assert is_loopback_host("127.255.0.9") and is_loopback_host("x.localhost")
    assert not is_loopback_host("localhost.evil.example") and not is_loopback_host("0.0.0.0")
    policy = HostPolicy("")
    assert policy.allows("localhost:8080") and policy.allows(None)
    assert not policy.allows("localhost:port") and not policy.allows("evil.example:8080")
    assert not policy.allows("::1:8080")  # an IPv6 address needs its brackets
    assert HostPolicy("*").allows("anything.example")


@pytest.mark.parametrize("raw", [" , ", ",", "  ", ",,, ,"])
def test_a_secret_of_only_commas_and_blanks_is_an_error(raw: str) -> None:
    with pytest.raises(ValueError, match="holds no secret"):
        Settings(secret=raw)
    with pytest.raises(msgspec.ValidationError, match="holds no secret"):
        Settings.from_env({"HUB_SECRET": raw})
    assert Settings.from_env({"HUB_SECRET": ""}).secret == ""  # unset: open, and it says so


@pytest.mark.parametrize("via", ["flag", "env"])
def test_hub_serve_exits_2_for_a_secret_of_only_commas(
    via: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["serve", "--port", "0"]
    if via == "flag":
        argv += ["--secret", ","]
    else:
        monkeypatch.setenv("HUB_SECRET", " , ")
    args = build_parser().parse_args(argv)
    assert run_command(args.func, args, prog="hub serve", debug=False) == 2
    assert "holds no secret" in capsys.readouterr().err


async def test_the_open_mode_warning_survives_log_level_error() -> None:
    async with hub_process("--log-level", "error") as hub:
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"http://127.0.0.1:{hub.port}/healthz")).status_code == 200
        assert "hub is OPEN" in hub.stderr


def test_allowed_hosts_is_a_flag_and_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["serve", "--allowed-hosts", "hub.lan,*.corp.example"])
    assert settings_from_args(args).allowed_hosts == "hub.lan,*.corp.example"
    monkeypatch.setenv("HUB_ALLOWED_HOSTS", "other.lan")
    assert settings_from_args(build_parser().parse_args(["serve"])).allowed_hosts == "other.lan"
