"""`GET /v1/asyncapi.json`: an AsyncAPI 3.0 document generated from the protocol's frames and
the loaded catalog, which the official AsyncAPI parser (@asyncapi/parser, from npm, pinned in
tests/js) accepts without an error, and which says what the hub really sends."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.asyncapi import CLIENT_OPS, CLOSE_CODES, SERVER_FRAMES, asyncapi_document
from hub.protocol import CloseCode
from hub.wire.catalog import EventCatalog
from services.events import EVENT_TYPES, register_events

from .js_tools import node_tools
from .support import RunningHub, run_hub

REPO = Path(__file__).resolve().parent.parent
SECRET = "asyncapi-test-secret-0123456789abcdef0123456789"
VALIDATOR_TIMEOUT_S = 120


def services_catalog() -> EventCatalog:
    catalog = EventCatalog()
    register_events(catalog)
    return catalog


@pytest.fixture
async def demo_hub() -> AsyncIterator[RunningHub]:
    async with run_hub(catalog=services_catalog()) as running:
        yield running


async def fetch_document(running: RunningHub, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with running.http() as http:
        response = await http.get("/v1/asyncapi.json", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    # `servers` names the Host asked for: a cache in front must not serve it to another host
    assert "host" in response.headers.get("vary", "").lower()
    document: dict[str, Any] = response.json()
    return document


def validate_with_asyncapi_parser(tmp_path: Path, documents: dict[str, dict[str, Any]]) -> str:
    """Run tests/js/validate-asyncapi.mjs (the official parser) on the documents; its output."""
    files = []
    for name, document in documents.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(document))
        files.append(str(path))
    tools = node_tools()
    result = subprocess.run(
        ["node", str(tools / "validate-asyncapi.mjs"), *files],
        cwd=tools, capture_output=True, text=True, timeout=VALIDATOR_TIMEOUT_S, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def message_names(document: dict[str, Any], channel: str) -> set[str]:
    return set(document["channels"][channel]["messages"])


def operation_messages(document: dict[str, Any], operation: str) -> list[str]:
    refs = [m["$ref"] for m in document["operations"][operation]["messages"]]
    return [ref.rsplit("/", 1)[1] for ref in refs]


async def test_the_document_passes_the_asyncapi_parser(
    demo_hub: RunningHub, tmp_path: Path
) -> None:
    served = await fetch_document(demo_hub)
    documents = {
        "served": served,
        "no_catalog": asyncapi_document(EventCatalog()),
        "tls_and_auth": asyncapi_document(
            services_catalog(), host="hub.example:443", secure=True, auth=True
        ),
    }
    output = validate_with_asyncapi_parser(tmp_path, documents)
    for name in documents:
        assert f"{name}.json: 0 error(s)" in output, output


def test_the_validator_reports_what_is_wrong(tmp_path: Path) -> None:
    # The check above is worth something only if the parser sees errors in a broken document.
    broken = asyncapi_document(services_catalog())
    broken["channels"]["projectSse"]["address"] = "/v1/projects/{proj}/sse"
    broken["components"]["schemas"]["WelcomeFrame"]["properties"]["head"]["type"] = "integr"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    tools = node_tools()
    result = subprocess.run(
        ["node", str(tools / "validate-asyncapi.mjs"), str(path)],
        cwd=tools, capture_output=True, text=True, timeout=VALIDATOR_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Missed: proj" in result.stderr, result.stderr
    assert "WelcomeFrame.properties.head.type" in result.stderr, result.stderr


async def test_every_event_type_of_the_catalog_is_a_message(demo_hub: RunningHub) -> None:
    document = await fetch_document(demo_hub)
    assert len(EVENT_TYPES) == 14
    messages = document["components"]["messages"]
    for event_type, payload in EVENT_TYPES.items():
        assert event_type in message_names(document, "projectWebSocket")
        assert event_type in message_names(document, "projectSse")
        assert event_type in operation_messages(document, "sendFrames")
        assert event_type in operation_messages(document, "sendSseEvents")
        envelope, typed = messages[event_type]["payload"]["allOf"]
        assert envelope == {"$ref": "#/components/schemas/EventFrame"}
        assert typed["properties"]["type"] == {"const": event_type}
        assert typed["properties"]["data"] == {"$ref": f"#/components/schemas/{payload.__name__}"}
    job = document["components"]["schemas"]["IngestJob"]
    assert job["properties"]["progress"] == {
        "type": "number",
        "minimum": 0.0,
        "maximum": 1.0,
        "default": 0.0,
    }


async def test_every_frame_and_op_is_a_message(demo_hub: RunningHub) -> None:
    document = await fetch_document(demo_hub)
    ops = {"welcome", "event", "replayed", "gap", "snapshot", "subscribed", "pong", "error"}
    assert {s.__struct_config__.tag for s in SERVER_FRAMES} == ops
    assert set(operation_messages(document, "sendFrames")) == ops | {"batch"} | set(EVENT_TYPES)
    assert operation_messages(document, "receiveOps") == ["subscribe", "unsubscribe", "ping"]
    assert [s.__struct_config__.tag for s in CLIENT_OPS] == ["subscribe", "unsubscribe", "ping"]
    sse = {"welcome", "replayed", "gap", "snapshot", "error"}
    assert set(operation_messages(document, "sendSseEvents")) == sse | set(EVENT_TYPES)
    messages = document["components"]["messages"]
    assert all(m["summary"] for m in messages.values())
    assert messages["subscribe"]["title"] == "subscribe op"
    schemas = document["components"]["schemas"]
    assert schemas["SubscribeOp"]["additionalProperties"] is False  # unknown fields refused
    assert schemas["ErrorFrame"]["properties"]["op"] == {"enum": ["error"]}
    ws = document["channels"]["projectWebSocket"]
    assert ws["address"] == "/v1/projects/{project}/ws"
    assert document["channels"]["projectSse"]["address"] == "/v1/projects/{project}/sse"
    assert set(ws["bindings"]["ws"]["query"]["properties"]) >= {"since", "epoch", "types"}
    servers = document["servers"]
    assert servers["websocket"] == {
        "host": f"127.0.0.1:{demo_hub.port}",
        "protocol": "ws",
        "description": "WebSocket subscriptions",
    }
    assert servers["http"]["protocol"] == "http"


async def test_the_close_codes_are_documented(demo_hub: RunningHub) -> None:
    document = await fetch_document(demo_hub)
    ws = document["channels"]["projectWebSocket"]
    listed = {entry["code"]: entry for entry in ws["x-close-codes"]}
    assert set(listed) == {int(code) for code in CloseCode}
    assert listed[4008]["errors"] == ["slow_consumer", "replay_overrun", "resync"]
    assert listed[4001]["name"] == "UNAUTHORIZED"
    for code in CloseCode:
        assert re.search(rf"^\| {int(code)} \|", ws["description"], re.MULTILINE), code


def test_the_close_codes_match_the_protocol_doc() -> None:
    doc = (REPO / "docs" / "protocol.md").read_text()
    table = re.findall(r"^\| (\d{4}) \|([^|]*)\|", doc, re.MULTILINE)
    assert {int(code) for code, _ in table} == {int(c.code) for c in CLOSE_CODES}
    documented = {int(code): errors for code, errors in table}
    for entry in CLOSE_CODES:
        for error in entry.errors:
            assert f"`{error}`" in documented[int(entry.code)], (entry.code, error)


@pytest.mark.hub_settings(secret=SECRET)
async def test_with_a_secret_the_document_needs_a_token_and_names_the_schemes(
    running_hub: RunningHub,
) -> None:
    from hub.auth import mint_token

    async with running_hub.http() as http:
        assert (await http.get("/v1/asyncapi.json")).status_code == 401
    token = mint_token(SECRET, subject="t", projects=["*"], scopes=["subscribe"], ttl_s=60)
    document = await fetch_document(running_hub, token)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["queryToken"]["in"] == "query"
    assert len(document["servers"]["websocket"]["security"]) == 2


async def test_the_served_document_follows_types_registered_after_startup() -> None:
    async with run_hub(catalog=EventCatalog()) as running:
        before = await fetch_document(running)
        assert before["components"]["messages"].keys() == {
            "welcome", "event", "replayed", "gap", "snapshot", "subscribed", "pong", "error",
            "batch", "subscribe", "unsubscribe", "ping",
        }  # fmt: skip
        register_events(running.hub.catalog)
        after = await fetch_document(running)
    assert set(EVENT_TYPES) <= set(after["components"]["messages"])
