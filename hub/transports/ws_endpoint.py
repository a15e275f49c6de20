"""`GET /v1/projects/{project}/ws`: one subscriber's session.

Order on connect (docs/protocol.md): register (live events queue up), `welcome`, then replay or
`gap` + `snapshot`, then the queued live events with seq above what was replayed, then live.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from collections.abc import MutableMapping
from typing import Any

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
from .direct import EXTENSION, DetachableChannel, Message

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
    detached = False
    try:
        detached = await _serve(hub, websocket, params, principal, slot)
    finally:
        if not detached:  # else the detached session releases it when the socket ends
            slot.release()


async def _serve(
    hub: Hub,
    websocket: WebSocket,
    params: SubscriptionParams,
    principal: Principal,
    slot: ConnectionSlot,
) -> bool:
    """Serve the session; True when it was detached (it goes on without this task)."""
    await websocket.accept()
    sink = _make_sink(websocket, hub.settings)
    connection, expiry = register_subscriber(hub, params, principal, sink)
    await hub.manager.add(connection)
    connection.start()
    detached = False
    try:
        await start_stream(hub, connection, params)
        session = _session(hub, websocket, connection, params, principal)
        channel = _detachable(websocket)
        if channel is not None:
            _DetachedSession(channel, connection, sink, session, hub, expiry, slot).start()
            detached = True
            return True
        await _serve_ops(websocket, connection, sink, session)
    except WebSocketDisconnect:
        pass
    except HubError as exc:  # e.g. the backend went away while replaying
        connection.close(exc.close_code, exc.code, exc.message, retryable=exc.retryable)
    finally:
        if not detached:
            await release_subscriber(hub, connection, expiry, slot)
    return False


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


def _session(
    hub: Hub,
    websocket: WebSocket,
    connection: Connection,
    params: SubscriptionParams,
    principal: Principal,
) -> SubscriberSession:
    def apply(patterns: list[str], keys: list[str] | None) -> None:
        type_filter = principal.type_filter(patterns)
        hub.manager.set_filter(connection, type_filter, principal.key_filter(keys))

    return SubscriberSession(
        hub.settings,
        params.types,
        keys=params.keys,
        explicit_types=params.explicit_types,
        op_budget=limits_of(websocket).client_ops(),
        apply=apply,
    )


async def _handle(
    message: Message | MutableMapping[str, Any],
    connection: Connection,
    sink: AnySink,
    session: SubscriberSession,
) -> bool:
    """One client message: False once the session is over."""
    if message["type"] == "websocket.disconnect":
        return False
    text = message.get("text")
    outcome = session.receive_binary() if text is None else session.receive(text)
    if isinstance(outcome, Close):
        connection.close(
            outcome.code, outcome.error_code, outcome.message, retryable=outcome.retryable
        )
        return False
    await sink.send(Control(outcome))
    await asyncio.sleep(0)  # ops queued on one socket take turns with other sockets' work
    return True


async def _serve_ops(
    websocket: WebSocket, connection: Connection, sink: AnySink, session: SubscriberSession
) -> None:
    """Move client frames to the session and its replies back, until the close."""
    while await _handle(await websocket.receive(), connection, sink, session):
        pass


def _detachable(websocket: WebSocket) -> DetachableChannel | None:
    extension = websocket.scope.get("extensions", {}).get(EXTENSION)
    channel = extension.get("channel") if extension is not None else None
    return channel if isinstance(channel, DetachableChannel) else None


class _DetachedSession:
    """A subscriber's session once its ASGI task has returned (the direct path).

    An idle subscriber then costs no task and no coroutine chain (about 9 KiB each, see
    docs/benchmarks.md): the protocol keeps the socket open and calls `wake` when the client
    sends something or goes away; a task runs only while there are messages to handle.
    """

    __slots__ = (
        "_channel",
        "_connection",
        "_expiry",
        "_hub",
        "_pump",
        "_session",
        "_sink",
        "_slot",
    )

    def __init__(
        self,
        channel: DetachableChannel,
        connection: Connection,
        sink: AnySink,
        session: SubscriberSession,
        hub: Hub,
        expiry: TimerHandle | None,
        slot: ConnectionSlot,
    ) -> None:
        self._channel = channel
        self._connection = connection
        self._sink = sink
        self._session = session
        self._hub = hub
        self._expiry = expiry
        self._slot = slot
        self._pump: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._channel.detach(self._wake)

    def _wake(self) -> None:
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._run())
            self._channel.track(self._pump)

    async def _run(self) -> None:
        over = False
        try:
            while (message := self._channel.take()) is not None:
                if not await _handle(message, self._connection, self._sink, self._session):
                    over = True
                    break
        except WebSocketDisconnect:
            over = True
        except HubError as exc:
            over = True
            self._connection.close(exc.close_code, exc.code, exc.message, retryable=exc.retryable)
        except BaseException:
            over = True
            raise
        finally:
            self._pump = None
            if over:
                self._channel.detach(_ignore)  # later messages (a disconnect) wake nothing
                await release_subscriber(self._hub, self._connection, self._expiry, self._slot)
        self._channel.resume_reading()


def _ignore() -> None:
    pass
