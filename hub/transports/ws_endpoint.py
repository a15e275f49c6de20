"""`GET /v1/projects/{project}/ws`: one subscriber's session.

Order on connect (docs/protocol.md): register (live events queue up), `welcome`, then replay or
`gap` + `snapshot`, then the queued live events with seq above what was replayed, then live.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..auth import Principal, authorize
from ..config import Settings
from ..core import Hub
from ..errors import HubError
from ..fanout.connection import AnySink, Connection
from ..fanout.framers import WebSocketFramer
from ..fanout.outbound import Control
from ..fanout.pull_sink import PullSink
from ..fanout.push_sink import PushSink
from ..fanout.session import register_subscriber, release_subscriber, start_stream
from ..fanout.subscriber_session import Close, SubscriberSession
from ..limits import ConnectionSlot, admit_connection, limits_of
from ..protocol import CloseCode, ErrorFrame, close_reason, encode
from ..wire.subscription import SubscriptionParams, parse_subscription
from .direct import EXTENSION

__all__ = ["refuse", "websocket_endpoint"]

logger = logging.getLogger("hub.ws")


async def websocket_endpoint(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    settings = hub.settings
    try:
        params = parse_subscription(
            websocket.path_params["project"],
            websocket.query_params,
            settings,
            websocket.scope.get("query_string", b""),
        )
        principal = authorize(websocket, params.project, "subscribe")
        slot = admit_connection(websocket, principal)
    except HubError as exc:
        # Accept, then close with the code: a refused handshake is a bare HTTP status.
        await websocket.accept()
        await refuse(websocket, exc)
        return
    try:
        await _serve(hub, websocket, params, principal, slot)
    finally:
        slot.release()


async def _serve(
    hub: Hub,
    websocket: WebSocket,
    params: SubscriptionParams,
    principal: Principal,
    slot: ConnectionSlot,
) -> None:
    await websocket.accept()
    sink = _make_sink(websocket, hub.settings)
    connection, expiry = register_subscriber(hub, params, principal, sink)
    await hub.manager.add(connection)
    connection.start()
    try:
        await start_stream(hub, connection, params)
        await _serve_ops(hub, websocket, connection, sink, params, principal)
    except WebSocketDisconnect:
        pass
    except HubError as exc:  # e.g. the backend went away while replaying
        connection.close(exc.close_code, exc.code, exc.message, retryable=exc.retryable)
    finally:
        await release_subscriber(hub, connection, expiry, slot)


async def refuse(websocket: WebSocket, exc: HubError) -> None:
    """Send one error frame with the detail, then close with the error's code."""
    frame = ErrorFrame(
        code=exc.code, message=exc.message, retryable=exc.retryable, close=int(exc.close_code)
    )
    try:
        await websocket.send_text(encode(frame).decode())
        await websocket.close(int(exc.close_code), close_reason(exc.message))
    except (WebSocketDisconnect, RuntimeError):
        pass


def _make_sink(websocket: WebSocket, settings: Settings) -> AnySink:
    extension = websocket.scope.get("extensions", {}).get(EXTENSION)
    if extension is not None:
        return PushSink(extension["channel"])
    return PullSink(
        _AsgiWebSocket(websocket),
        WebSocketFramer(),
        chunk_bytes=settings.max_frame_bytes,
        heartbeat_s=settings.heartbeat_s,
    )


class _AsgiWebSocket:
    """The plain ASGI WebSocket, for servers without the direct-send extension."""

    def __init__(self, websocket: WebSocket) -> None:
        self._send = websocket.send

    async def send(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "text": data.decode()})

    async def close(self, error: ErrorFrame) -> None:
        code = error.close or CloseCode.INTERNAL_ERROR
        reason = close_reason(error.message)
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


async def _serve_ops(
    hub: Hub,
    websocket: WebSocket,
    connection: Connection,
    sink: AnySink,
    params: SubscriptionParams,
    principal: Principal,
) -> None:
    """Move client frames to the session and its replies back, until the close."""

    def apply(patterns: list[str], keys: list[str] | None) -> None:
        type_filter = principal.type_filter(patterns)
        hub.manager.set_filter(connection, type_filter, principal.key_filter(keys))

    session = SubscriberSession(
        hub.settings,
        params.types,
        keys=params.keys,
        explicit_types=params.explicit_types,
        op_budget=limits_of(websocket).client_ops(),
        apply=apply,
    )
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        outcome = session.receive_binary() if text is None else session.receive(text)
        if isinstance(outcome, Close):
            connection.close(
                outcome.code, outcome.error_code, outcome.message, retryable=outcome.retryable
            )
            return
        await sink.send(Control(outcome))
        await asyncio.sleep(0)  # ops queued on one socket take turns with other sockets' work
