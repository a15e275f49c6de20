"""`GET /v1/projects/{project}/ws`: one subscriber's session.

Order on connect (PROTOCOL.md): register (live events queue up), `welcome`, then replay or
`gap` + `snapshot`, then the queued live events with seq above what was replayed, then live.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from .auth import Principal, authorize
from .backends.base import StoredEvent
from .connection import AsgiSink, Connection, DirectSink, Sink
from .core import Hub
from .direct import EXTENSION
from .errors import BadRequest, HubError
from .limits import admit_connection, limits_of
from .protocol import (
    CloseCode,
    ErrorFrame,
    FrameError,
    GapFrame,
    PingOp,
    PongFrame,
    ReplayedFrame,
    SubscribedFrame,
    SubscribeOp,
    WelcomeFrame,
    close_reason,
    decode_client_frame,
    encode,
    encode_batch,
)
from .session import open_connection, start_stream
from .subscription import SubscriptionParams, parse_subscription
from .topics import validate_pattern

__all__ = ["refuse", "websocket_endpoint"]

logger = logging.getLogger("hub.ws")


async def websocket_endpoint(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    settings = hub.settings
    try:
        params = parse_subscription(
            websocket.path_params["project"], websocket.query_params, settings
        )
        principal = authorize(websocket, params.project, "subscribe")
        slot = admit_connection(websocket, principal)
    except HubError as exc:
        # Accept, then close with the code: a refused handshake is a bare HTTP status.
        await websocket.accept()
        await refuse(websocket, exc)
        return
    try:
        await _serve(hub, websocket, params, principal)
    finally:
        slot.release()


async def _serve(
    hub: Hub, websocket: WebSocket, params: SubscriptionParams, principal: Principal
) -> None:
    await websocket.accept()
    sink = _make_sink(websocket)
    connection, expiry = open_connection(hub, params, principal, sink)
    await hub.manager.add(connection)
    sink.start(connection)
    try:
        await start_stream(hub, connection, params, _WebSocketStreamWriter(sink))
        await _serve_ops(hub, websocket, connection, sink, params, principal)
    except WebSocketDisconnect:
        pass
    except HubError as exc:  # e.g. the backend went away while replaying
        connection.close(exc.close_code, exc.code, exc.message, retryable=exc.retryable)
    finally:
        if expiry is not None:
            expiry.cancel()
        connection.closed = True
        await hub.manager.remove(connection)
        await sink.stop()


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


def _make_sink(websocket: WebSocket) -> Sink:
    extension = websocket.scope.get("extensions", {}).get(EXTENSION)
    if extension is not None:
        return DirectSink(extension["channel"])
    return AsgiSink(websocket.send)


class _WebSocketStreamWriter:
    """Session framing for WebSocket: one JSON object per message, events as arrays."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    async def welcome(self, frame: WelcomeFrame, at_head: bool) -> None:
        await self._sink.send(encode(frame))

    async def events(self, events: list[StoredEvent]) -> None:
        await self._sink.send(encode_batch([e.frame for e in events]))

    async def replayed(self, frame: ReplayedFrame) -> None:
        await self._sink.send(encode(frame))

    async def gap(self, frame: GapFrame) -> None:
        await self._sink.send(encode(frame))


async def _serve_ops(
    hub: Hub,
    websocket: WebSocket,
    connection: Connection,
    sink: Sink,
    params: SubscriptionParams,
    principal: Principal,
) -> None:
    settings = hub.settings
    patterns = list(params.types)
    implicit_default = not params.explicit_types
    errors = 0
    op_budget = limits_of(websocket).client_ops()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            connection.close(
                CloseCode.UNSUPPORTED_DATA, "binary_frame", "binary frames are not accepted"
            )
            return
        if op_budget is not None and not op_budget.try_take():
            connection.close(
                CloseCode.RATE_LIMITED,
                "rate_limited",
                f"more than {settings.client_ops_rate:g} frames per second; slow down",
                retryable=True,
            )
            return
        try:
            op = decode_client_frame(text, settings.max_json_depth)
            if isinstance(op, PingOp):
                reply = encode(PongFrame(op.id))
            else:
                new = [validate_pattern(p, settings.max_pattern_length) for p in op.types]
                if isinstance(op, SubscribeOp):
                    # A client that connected without `types` got `*`; its first subscribe
                    # says what it actually wants.
                    base = [] if implicit_default else patterns
                    merged = base + [p for p in new if p not in base]
                    if len(merged) > settings.max_patterns:
                        raise BadRequest(
                            f"too many type patterns: {len(merged)} > {settings.max_patterns}"
                        )
                    patterns = merged
                else:
                    patterns = [p for p in patterns if p not in new]
                implicit_default = False
                hub.manager.set_filter(connection, principal.type_filter(patterns))
                reply = encode(SubscribedFrame(op.id, patterns))
        except (FrameError, BadRequest) as exc:
            errors += 1
            frame_id = exc.frame_id if isinstance(exc, FrameError) else _id_of(text)
            reply = encode(
                ErrorFrame(code=exc.code, message=exc.message, id=frame_id, retryable=False)
            )
            if errors > settings.error_budget:
                connection.close(
                    CloseCode.POLICY_VIOLATION,
                    "too_many_errors",
                    f"more than {settings.error_budget} invalid frames",
                )
                return
        await sink.send(reply)
        await asyncio.sleep(0)  # ops queued on one socket take turns with other sockets' work


def _id_of(text: str) -> int | str | None:
    try:
        op = decode_client_frame(text)
    except FrameError as exc:
        return exc.frame_id
    return op.id
