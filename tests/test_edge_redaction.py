"""No log line the process writes holds a token, whatever spelling carried it (issue 10,
part 5): the query is redacted by decoded parameter name, case-insensitively."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hub.auth import mint_token
from hub.auth.redaction import redact
from hub.config import Settings
from hub.logs import JsonFormatter

from .edge_support import capture_logs, control_subscriber
from .support import run_hub, wait_for

SECRET = "redaction-test-secret-that-is-32-bytes-or-more"
TOKEN = mint_token(SECRET, subject="alice", projects=["p", "control"], scopes=["subscribe"])
# What identifies the token in a line: its signature, and its claims (the part after `eyJ...`).
SECRET_PARTS = (TOKEN, TOKEN.split(".")[2], TOKEN.split(".")[1])

SPELLINGS = [
    "token={t}",
    "TOKEN={t}",
    "Token={t}",
    "%74oken={t}",
    "%54%4F%4B%45%4E={t}",
    "to%6Ben={t}",
    "%2574oken={t}",
    "token%3D{t}",
    "token%3d{t}",
    "access_token={t}",
    "since=0&token={t}&types=a.*",
    "x=1;token={t}",
]


def assert_no_token(text: str) -> None:
    for part in SECRET_PARTS:
        assert part not in text, text[:3000]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_query_spelling_of_the_token_is_redacted(spelling: str) -> None:
    query = spelling.format(t=TOKEN)
    for line in (
        f'127.0.0.1:5 - "WebSocket /v1/projects/p/ws?{query}" [accepted]',
        f"GET http://127.0.0.1:8/v1/projects/p/events?{query} HTTP/1.1",
        f"/v1/projects/p/sse?{query.replace(TOKEN, 'not-a-jwt-but-secret')}",
    ):
        redacted = redact(line)
        assert_no_token(redacted)
        assert "not-a-jwt-but-secret" not in redacted
        assert "[redacted]" in redacted


@pytest.mark.parametrize(
    "text",
    ["Authorization: Bearer {t}", "authorization: bearer {t}", "< Sec-WebSocket-Protocol: {t}"],
)
def test_header_values_are_redacted(text: str) -> None:
    assert_no_token(redact(text.format(t=TOKEN)))


def test_lines_without_tokens_are_left_alone() -> None:
    for text in ("/v1/projects/token/ws?since=3", "closing websocket with 1008: x=1", "a % b"):
        assert redact(text) == text


async def test_a_live_hub_logs_no_token_whatever_the_spelling() -> None:
    settings = Settings(heartbeat_s=5.0, secret=SECRET)
    async with run_hub(settings, log_level="debug", access_log=True) as running:
        with capture_logs(logging.DEBUG) as logs:
            async with control_subscriber(running, "control", TOKEN) as control:
                base = f"ws://127.0.0.1:{running.port}/v1/projects/p/ws"
                # Spellings the hub decodes to `token` authenticate...
                for query in ("token={t}", "%74oken={t}", "to%6Ben={t}"):
                    async with connect(f"{base}?{query.format(t=TOKEN)}") as ws:
                        assert msgspec.json.decode(await ws.recv())["op"] == "welcome"
                    await control.publish()
                # ...the others are refused (or carry it alongside); every one is logged.
                for spelling in SPELLINGS:
                    with contextlib.suppress(ConnectionClosed, InvalidStatus):
                        async with connect(f"{base}?{spelling.format(t=TOKEN)}") as ws:
                            await asyncio.wait_for(ws.recv(), 5)  # welcome, or error
                async with connect(
                    base, additional_headers={"Authorization": f"Bearer {TOKEN}"},
                    subprotocols=[TOKEN],  # type: ignore[list-item]
                ) as ws:  # fmt: skip
                    await ws.recv()
                async with httpx.AsyncClient(base_url=running.url, timeout=5) as http:
                    for spelling in SPELLINGS:
                        path = f"/v1/projects/p/events?since=0&{spelling.format(t=TOKEN)}"
                        await http.get(path)
                        await http.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
                await control.publish()
            try:  # an exception whose text holds the token
                raise ValueError(f"bad request /ws?token={TOKEN} from Bearer {TOKEN}")
            except ValueError:
                logging.getLogger("hub.test").exception("failed: %s", f"/x?%74oken={TOKEN}")
                logging.getLogger("asyncio").error("task failed", exc_info=True)
            await wait_for(lambda: "%74oken=[redacted]" in logs.text, what="the spelled line")
    text = logs.text
    assert_no_token(text)
    assert "ValueError: bad request /ws?token=[redacted] from Bearer [redacted]" in text
    assert '"GET /v1/projects/p/events?since=0&%74oken=[redacted] HTTP/1.1" 200' in text
    exception_record = logging.getLogger("hub.test").makeRecord(
        "hub.test", logging.ERROR, __file__, 1, "x %s", (f"?token={TOKEN}",), None
    )
    assert_no_token(JsonFormatter().format(exception_record))
