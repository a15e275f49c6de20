"""`GET /v1/projects/{project}/sse`: one subscriber's session over Server-Sent Events.

The session is the WebSocket one (ws_endpoint.py): register (live events queue up),
`welcome`, then replay or `gap` + `snapshot`, then live. Each event is one block
`id: <epoch>:<seq>` / `event: <type>` / `data: <event frame JSON>`; control messages are
`event: welcome|replayed|gap|snapshot|error`, and those that move the stream's position
carry an `id` too, so `Last-Event-ID` always says where to resume. Wherever the WebSocket
path would close (queue overflow 4008, drain 1001, ...) the stream sends `event: error`
with the close code and ends; the client resumes with `Last-Event-ID` (or since+epoch).
With `?named=0` events carry no `event:` line, for `EventSource.onmessage` (sse_messages.py).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..auth import Principal, authorize
from ..core import Hub
from ..errors import BadRequest, HubError
from ..fanout.connection import Connection
from ..fanout.framers import SseFramer
from ..fanout.pull_sink import PullSink
from ..fanout.session import register_subscriber, release_subscriber, start_stream
from ..limits import ConnectionSlot, admit_connection
from ..protocol import ErrorFrame
from ..wire.subscription import SubscriptionParams, parse_since, parse_subscription
from .sse_messages import sse_framer

__all__ = ["parse_last_event_id", "sse_endpoint"]

logger = logging.getLogger("hub.sse")

HEADERS = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # nginx: do not buffer the stream
}


def parse_last_event_id(raw: str) -> tuple[int | None, str | None]:
    """`<epoch>:<seq>` (or a bare `<seq>`) -> (since, epoch); empty -> (None, None)."""
    raw = raw.strip()
    if not raw:
        return None, None
    epoch, sep, seq = raw.rpartition(":")
    if not seq or (sep and (not epoch or len(epoch) > 64 or not epoch.isprintable())):
        raise BadRequest("invalid Last-Event-ID: expected <epoch>:<seq>")
    return parse_since(seq, "Last-Event-ID seq"), (epoch or None)


class _SseBody:
    """The response body of one stream: each write one chunk; the close ends the body."""

    def __init__(self, send: Send) -> None:
        self._send = send

    async def send(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def close(self, error: ErrorFrame) -> None:
        await self._send({"type": "http.response.body", "body": b""})


# --- the endpoint and its session ---------------------------------------------------------


async def sse_endpoint(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    settings = hub.settings
    raw_query = request.scope.get("query_string", b"")
    params = parse_subscription(
        request.path_params["project"], request.query_params, settings, raw_query
    )
    last_event_id = request.headers.get("last-event-id")
    if last_event_id is not None and last_event_id.strip():
        # It wins over since/epoch: EventSource sends it on its own reconnects.
        since, epoch = parse_last_event_id(last_event_id)
        params = msgspec.structs.replace(params, since=since, epoch=epoch)
    # The same checks as the WebSocket path: the grant (401/403), then a connection slot (503).
    framer = sse_framer(request.query_params)  # `named=0`: events as plain messages
    principal = authorize(request, params.project, "subscribe")
    slot = admit_connection(request, principal)
    return _SseStream(hub, params, principal, slot, framer)


class _SseStream(Response):
    """The streaming response: runs the session until the stream ends or the client leaves."""

    def __init__(
        self,
        hub: Hub,
        params: SubscriptionParams,
        principal: Principal,
        slot: ConnectionSlot,
        framer: SseFramer,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(HEADERS)
        self._hub = hub
        self._params = params
        self._principal = principal
        self._slot = slot
        self._framer = framer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream(receive, send)
        finally:
            self._slot.release()

    async def _stream(self, receive: Receive, send: Send) -> None:
        hub, params, settings = self._hub, self._params, self._hub.settings
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        sink = PullSink(
            _SseBody(send),
            self._framer,
            chunk_bytes=settings.max_frame_bytes,
            heartbeat_s=settings.heartbeat_s,
        )
        connection, expiry = register_subscriber(hub, params, self._principal, sink)
        await hub.manager.add(connection)
        hub.stats.sse_connections += 1
        connection.start()
        session = asyncio.create_task(_run_session(hub, connection, sink, params))
        disconnect = asyncio.create_task(_wait_for_disconnect(receive))
        # The stream may end while the session still waits for the socket (replaying).
        finished = asyncio.create_task(sink.finished.wait())
        tasks = (session, disconnect, finished)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connection.closed = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            hub.stats.sse_connections -= 1
            await release_subscriber(hub, connection, expiry, self._slot)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _run_session(
    hub: Hub, connection: Connection, sink: PullSink, params: SubscriptionParams
) -> None:
    try:
        await start_stream(hub, connection, params)
    except HubError as exc:  # e.g. the backend went away while replaying
        connection.close(exc.close_code, exc.code, exc.message, retryable=exc.retryable)
    await sink.finished.wait()
