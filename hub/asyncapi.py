"""The AsyncAPI 3.0 document of the hub (`GET /v1/asyncapi.json`), generated, never written.

Frames come from the msgspec Structs of hub.protocol (`msgspec.json.schema_components`), event
payloads from the loaded catalog, so the document cannot drift from what the hub sends. It
describes the hub as the application: `send` operations are what it sends to subscribers,
`receive` what it accepts from them. Pure: no web stack (hub.transports.asyncapi_endpoint
serves it).
"""

from __future__ import annotations

import re
from typing import Any, Final, NamedTuple

import msgspec

from .protocol import (
    CloseCode,
    ErrorFrame,
    EventFrame,
    GapFrame,
    PingOp,
    PongFrame,
    ReplayedFrame,
    SnapshotFrame,
    SubscribedFrame,
    SubscribeOp,
    UnsubscribeOp,
    WelcomeFrame,
)
from .wire.catalog import EventCatalog

__all__ = [
    "ASYNCAPI_VERSION",
    "CLIENT_OPS",
    "CLOSE_CODES",
    "SERVER_FRAMES",
    "SUMMARIES",
    "CloseCodeDoc",
    "asyncapi_document",
    "asyncapi_servers",
]

ASYNCAPI_VERSION: Final = "3.0.0"
PROTOCOL_VERSION: Final = "1"

SERVER_FRAMES: Final = (
    WelcomeFrame,
    EventFrame,
    ReplayedFrame,
    GapFrame,
    SnapshotFrame,
    SubscribedFrame,
    PongFrame,
    ErrorFrame,
)
CLIENT_OPS: Final = (SubscribeOp, UnsubscribeOp, PingOp)
SSE_CONTROL: Final = ("welcome", "replayed", "gap", "snapshot", "error")  # `event:` names

# One line per op (docs/protocol.md, "WebSocket subscription", says the rest).
SUMMARIES: Final = {
    "welcome": "First frame of every connection: the project's epoch, head, oldest and heartbeat.",
    "event": "One event; typed events are listed as messages of their own.",
    "replayed": "End of the replay after `since`: how many events, up to which seq.",
    "gap": "`since` cannot be replayed (evicted, epoch, ahead): a snapshot follows.",
    "snapshot": "Latest event per key; in pages while `more` is true.",
    "subscribed": "Reply to subscribe / unsubscribe: the patterns now in force.",
    "pong": "Reply to ping.",
    "error": "A refused op (the connection stays open), or the reason for the close that follows.",
    "subscribe": "Add type patterns (the first one replaces the implicit `*`); reply subscribed.",
    "unsubscribe": "Remove type patterns; reply subscribed.",
    "ping": "Application-level ping; reply pong.",
}


class CloseCodeDoc(NamedTuple):
    code: CloseCode
    errors: tuple[str, ...]  # the `code` of the error frame sent before the close
    when: str
    client_should: str


# docs/protocol.md, "WebSocket subscription" (a test checks that table lists the same codes).
CLOSE_CODES: Final = (
    CloseCodeDoc(CloseCode.NORMAL, (), "normal close", "stop"),
    CloseCodeDoc(
        CloseCode.GOING_AWAY,
        ("shutting_down", "epoch_changed"),
        "hub draining on shutdown; the project's sequence restarted",
        "reconnect with since + epoch, with jitter",
    ),
    CloseCodeDoc(CloseCode.UNSUPPORTED_DATA, ("binary_frame",), "binary frame received", "fix"),
    CloseCodeDoc(CloseCode.INVALID_PAYLOAD, ("invalid_utf8",), "text frame not UTF-8", "fix"),
    CloseCodeDoc(
        CloseCode.POLICY_VIOLATION,
        ("too_many_errors", "origin"),
        "error budget spent; Origin not allowed",
        "stop",
    ),
    CloseCodeDoc(
        CloseCode.MESSAGE_TOO_BIG, ("frame_too_large",), "inbound frame over the limit", "fix"
    ),
    CloseCodeDoc(
        CloseCode.INTERNAL_ERROR,
        (),
        "internal error; heartbeat ping not answered; a frame trickled in for too long",
        "reconnect with backoff",
    ),
    CloseCodeDoc(
        CloseCode.TRY_AGAIN_LATER,
        ("over_capacity", "unavailable"),
        "connection limit reached; backend unreachable",
        "reconnect with backoff",
    ),
    CloseCodeDoc(
        CloseCode.UNAUTHORIZED, ("unauthorized",), "token missing, invalid or expired", "refresh"
    ),
    CloseCodeDoc(CloseCode.FORBIDDEN, ("forbidden",), "token does not grant the project", "stop"),
    CloseCodeDoc(
        CloseCode.SLOW_CONSUMER,
        ("slow_consumer", "replay_overrun", "resync"),
        "outbound queue overflowed or stalled; retention moved past a replay; seqs missed",
        "reconnect with since (a gap if it is no longer retained)",
    ),
    CloseCodeDoc(CloseCode.RATE_LIMITED, ("rate_limited",), "too many ops per second", "back off"),
    CloseCodeDoc(
        CloseCode.BAD_REQUEST,
        ("bad_request",),
        "invalid since, epoch, types or project id",
        "fix the request",
    ),
)

_PROJECT: Final = {
    "description": "Project id: 1-128 characters, letters, digits, '.', '_' and '-', "
    "starting with a letter or digit."
}
_SUBSCRIPTION_QUERY: Final = {
    "type": "object",
    "properties": {
        "since": {
            "type": "integer",
            "minimum": 0,
            "description": "last seq seen: replay everything retained after it",
        },
        "epoch": {"type": "string", "description": "the epoch `since` belongs to"},
        "types": {
            "type": "string",
            "description": "comma-separated type patterns ('*' matches any run), e.g. agent.*",
        },
        "keys": {
            "type": "string",
            "description": "comma-separated entity key patterns ('*' matches any run), e.g. "
            "ingest.job/j17,workflow.node/run-42/*: only events with a matching key",
        },
        "token": {"type": "string", "description": "access token, when no header can be sent"},
    },
}
_COMPONENT_NAME: Final = re.compile(r"[^A-Za-z0-9._-]")


def asyncapi_document(
    catalog: EventCatalog, *, host: str = "localhost:8080", secure: bool = False, auth: bool = False
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for a hub reached at `host` with this catalog.

    `secure`: the hub is behind TLS (wss/https); `auth`: it requires a token (it has a secret).
    """
    schemas, frame_refs, event_refs = _schemas(catalog)
    frames = {_op(s): _frame_message(_op(s), "frame", frame_refs[s]) for s in SERVER_FRAMES}
    frames |= {_op(s): _frame_message(_op(s), "op", frame_refs[s]) for s in CLIENT_OPS}
    frames["batch"] = {
        "name": "batch",
        "title": "Coalesced frames",
        "summary": "Several server frames in one WebSocket text frame, in order.",
        "payload": {"type": "array", "items": {"oneOf": [frame_refs[s] for s in SERVER_FRAMES]}},
    }
    events = {t: _event_message(t, catalog, event_refs[t]) for t in catalog.types()}
    messages = {**frames, **events}
    ws_out = [_op(s) for s in SERVER_FRAMES] + ["batch", *events]
    ws_in = [_op(s) for s in CLIENT_OPS]
    sse_out = [*SSE_CONTROL, *events]
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "hub",
            "version": PROTOCOL_VERSION,
            "description": "Real-time event hub, wire protocol v1 (docs/protocol.md): typed, "
            "per-project, sequenced events over WebSocket and Server-Sent Events, resumable "
            "with since + epoch. This document describes the hub: `send` operations are what "
            "it sends to subscribers, `receive` operations what it accepts from them.",
        },
        "defaultContentType": "application/json",
        "servers": asyncapi_servers(host, secure=secure, auth=auth),
        "channels": {
            "projectWebSocket": {
                "address": "/v1/projects/{project}/ws",
                "title": "A project's events over WebSocket",
                "description": _ws_description(),
                "parameters": {"project": _PROJECT},
                "servers": [{"$ref": "#/servers/websocket"}],
                "messages": {name: _ref("messages", name) for name in [*ws_out, *ws_in]},
                "bindings": {"ws": {"query": _SUBSCRIPTION_QUERY, "bindingVersion": "0.1.0"}},
                "x-close-codes": [_close_code(doc) for doc in CLOSE_CODES],
            },
            "projectSse": {
                "address": "/v1/projects/{project}/sse",
                "title": "A project's events over Server-Sent Events",
                "description": "Each event: `id: <epoch>:<seq>`, `event: <type>`, `data: <the "
                "event frame JSON>`; control messages use `event: welcome|replayed|gap|"
                "snapshot|error`. Resume with the `Last-Event-ID` header or since + epoch. "
                "A `: keepalive` comment every heartbeat. With `named=0` events come without "
                "an `event:` line, so a bare EventSource's `onmessage` receives them.",
                "parameters": {"project": _PROJECT},
                "servers": [{"$ref": "#/servers/http"}],
                "messages": {name: _ref("messages", name) for name in sse_out},
            },
        },
        "operations": {
            "sendFrames": _operation("send", "projectWebSocket", ws_out, "Frames to a subscriber"),
            "receiveOps": _operation("receive", "projectWebSocket", ws_in, "Ops of a subscriber"),
            "sendSseEvents": {
                **_operation("send", "projectSse", sse_out, "Events to an SSE subscriber"),
                "bindings": {
                    "http": {
                        "method": "GET",
                        "query": _SUBSCRIPTION_QUERY,
                        "bindingVersion": "0.3.0",
                    }
                },
            },
        },
        "components": {"schemas": schemas, "messages": messages},
    }
    if auth:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            "queryToken": {"type": "httpApiKey", "name": "token", "in": "query"},
        }
    return document


def _schemas(
    catalog: EventCatalog,
) -> tuple[dict[str, Any], dict[type, dict[str, str]], dict[str, dict[str, str]]]:
    """Component schemas of every frame and event payload (one msgspec call: it names them
    apart), the $ref of each frame Struct, and the $ref of each event type's payload."""
    types = catalog.types()
    payloads = [catalog.payload_type(t) for t in types]
    structs: list[Any] = [*SERVER_FRAMES, *CLIENT_OPS, *payloads]
    refs, components = msgspec.json.schema_components(structs, ref_template="{name}")
    rename = {name: _COMPONENT_NAME.sub("_", name) for name in components}
    schemas = {rename[name]: _rebase_refs(schema, rename) for name, schema in components.items()}
    schemas["EventFrame"]["properties"]["data"] = {
        "description": "The event's payload: its schema is the event type's message payload."
    }
    named = [_rebase_refs(ref, rename) for ref in refs]
    frame_refs = dict(zip(structs[: len(SERVER_FRAMES) + len(CLIENT_OPS)], named, strict=False))
    event_refs = dict(zip(types, named[len(frame_refs) :], strict=True))
    return schemas, frame_refs, event_refs


def _rebase_refs(value: Any, rename: dict[str, str]) -> Any:
    """`{"$ref": "Name"}` -> `{"$ref": "#/components/schemas/Name"}`, everywhere in `value`."""
    if isinstance(value, dict):
        return {
            k: (
                f"#/components/schemas/{rename[v]}"
                if k == "$ref" and isinstance(v, str)
                else _rebase_refs(v, rename)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rebase_refs(v, rename) for v in value]
    return value


def _op(struct: type) -> str:
    tag: str = struct.__struct_config__.tag  # type: ignore[attr-defined]
    return tag


def _frame_message(op: str, kind: str, ref: dict[str, str]) -> dict[str, Any]:
    return {"name": op, "title": f"{op} {kind}", "summary": SUMMARIES[op], "payload": ref}


def _event_message(event_type: str, catalog: EventCatalog, ref: dict[str, str]) -> dict[str, Any]:
    payload = catalog.payload_type(event_type)
    assert payload is not None
    return {
        "name": event_type,
        "title": event_type,
        "summary": f"An `event` frame of type {event_type}; data is {payload.__name__}.",
        "payload": {
            "allOf": [
                {"$ref": "#/components/schemas/EventFrame"},
                {
                    "type": "object",
                    "properties": {"type": {"const": event_type}, "data": ref},
                    "required": ["type", "data"],
                },
            ]
        },
    }


def asyncapi_servers(host: str, *, secure: bool, auth: bool) -> dict[str, Any]:
    """The document's `servers`: where a client reaches the hub, and whether with a token."""
    security = (
        {"security": [_ref("securitySchemes", "bearer"), _ref("securitySchemes", "queryToken")]}
        if auth
        else {}
    )
    return {
        "websocket": {
            "host": host,
            "protocol": "wss" if secure else "ws",
            "description": "WebSocket subscriptions",
            **security,
        },
        "http": {
            "host": host,
            "protocol": "https" if secure else "http",
            "description": "Server-Sent Events subscriptions (and the HTTP API)",
            **security,
        },
    }


def _operation(action: str, channel: str, messages: list[str], title: str) -> dict[str, Any]:
    return {
        "action": action,
        "title": title,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in messages],
    }


def _ref(section: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{section}/{name}"}


def _close_code(doc: CloseCodeDoc) -> dict[str, Any]:
    return {
        "code": int(doc.code),
        "name": doc.code.name,
        "errors": list(doc.errors),
        "when": doc.when,
        "clientShould": doc.client_should,
    }


def _ws_description() -> str:
    rows = "\n".join(
        f"| {int(d.code)} | {', '.join(d.errors)} | {d.when} | {d.client_should} |"
        for d in CLOSE_CODES
    )
    return (
        "Server to client: text frames holding one frame object (with an `op`) or an array of "
        "them (`batch`). On connect: `welcome`; with `since`, the replay then `replayed`, or "
        "`gap` then `snapshot` (in pages while `more` is true); then live events. Before "
        "closing with a code of its own the hub sends an `error` frame with the same `close`."
        "\n\nClose codes (also in `x-close-codes`):\n\n"
        "| code | error `code` | when | client should |\n|---|---|---|---|\n" + rows
    )
