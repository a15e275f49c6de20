"""HTTP routes: publish, history page, snapshot, schema, health and readiness.

Each project route checks the token's grant (`authorize`); publishing also passes the rate
limits. The AuthGate middleware has already refused requests without a valid token.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..auth import authorize
from ..backends.base import Backend, Position, PublishRequest, StoredEvent
from ..core import Hub
from ..errors import (
    BadRequest,
    EventValidationError,
    HubError,
    OverCapacity,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    Unauthorized,
)
from ..limits import check_publish_rate
from ..wire.event_filter import EventFilter
from ..wire.json_rules import JsonRuleError, check_json
from ..wire.subscription import parse_keys_query, parse_since
from ..wire.topics import parse_types_param
from .read_limits import read_limiter_of, read_response

__all__ = [
    "error_response",
    "healthz",
    "history",
    "history_head",
    "json_response",
    "publish",
    "readyz",
    "schema",
    "snapshot",
]

logger = logging.getLogger("hub.http")

_encoder = msgspec.json.Encoder()
_body_decoder = msgspec.json.Decoder(PublishRequest | list[PublishRequest])


def json_response(content: Any, status_code: int = 200) -> Response:
    body = content if isinstance(content, bytes) else _encoder.encode(content)
    return Response(body, status_code, media_type="application/json")


def error_response(exc: HubError) -> Response:
    body = {"error": {"code": exc.code, "message": exc.message, "retryable": exc.retryable}}
    response = json_response(body, exc.http_status)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="hub"'
    elif isinstance(exc, RateLimited):
        response.headers["Retry-After"] = exc.retry_after_header
    elif isinstance(exc, OverCapacity):
        response.headers["Retry-After"] = "1"
    if isinstance(exc, RequestTimeout):
        # The body did not arrive in time: kept open, the connection would wait for the rest
        # (a trickler would hold it, and the drain at shutdown, until the head deadline).
        # Not for 413: closing with the body unread resets the socket, and with it the answer.
        response.headers["Connection"] = "close"
    return response


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):  # a body trickled in (slowloris) holds a task
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body is over the {limit} byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"body not received within {timeout_s:g}s") from None
    return b"".join(chunks)


def _decode_publish_body(body: bytes, max_batch: int, max_depth: int) -> list[PublishRequest]:
    if not body.strip():
        raise EventValidationError("empty body: expected an event object or an array of them")
    try:
        # Before decoding, which recurses (the data of each event is checked again after).
        check_json(body, max_depth, envelope=2)
    except JsonRuleError as exc:
        raise EventValidationError(f"invalid event: {exc.message}") from None
    try:
        decoded = _body_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise EventValidationError(f"invalid event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EventValidationError(f"malformed JSON: {exc}") from None
    requests = decoded if isinstance(decoded, list) else [decoded]
    if not requests:
        raise EventValidationError("empty array: nothing to publish")
    if len(requests) > max_batch:
        raise PayloadTooLarge(f"{len(requests)} events in one request; the limit is {max_batch}")
    return requests


async def publish(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    project = request.path_params["project"]
    hub.check_project(project)
    principal = authorize(request, project, "publish")
    settings = hub.settings
    check_publish_rate(request, project, principal, 1, take=False)  # before reading a body
    try:
        body = await _read_body(request, settings.max_publish_body, settings.body_timeout_s)
    except ClientDisconnect:
        # The publisher went away mid-body: nothing to answer, nothing published.
        hub.stats.aborted_bodies += 1
        logger.debug("publish body to %s aborted by the client", project)
        return Response(status_code=400)
    requests = _decode_publish_body(body, settings.max_publish_batch, settings.max_json_depth)
    check_publish_rate(request, project, principal, len(requests))
    seqs = await hub.publish_requests(project, requests)
    return json_response({"seqs": seqs}, 202)


def _parse_limit(raw: str | None, maximum: int) -> int:
    if raw is None or raw == "":
        return maximum
    # The length first: int() refuses over 4,300 digits with a ValueError (a 500).
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) < 1:
        raise BadRequest(f"invalid limit {raw[:40]!r}: expected an integer >= 1")
    return min(int(raw), maximum)


def _read_scope(request: Request) -> tuple[Hub, str, EventFilter]:
    """What a read route reads: the hub, the project (checked and granted) and the `types`
    and `keys` filter narrowed by the token's grant."""
    hub: Hub = request.app.state.hub
    project = request.path_params["project"]
    hub.check_project(project)
    principal = authorize(request, project, "subscribe")
    settings = hub.settings
    requested = parse_types_param(
        request.query_params.get("types"), settings.max_patterns, settings.max_pattern_length
    )
    keys = parse_keys_query(request.query_params, settings, request.scope.get("query_string"))
    return hub, project, EventFilter(principal.type_filter(requested), principal.key_filter(keys))


async def history(request: Request) -> Response:
    """A page of retained events after `since`; `next` is where the following page starts."""
    hub, project, event_filter = _read_scope(request)
    settings = hub.settings
    since = parse_since(request.query_params.get("since")) or 0
    limit = _parse_limit(request.query_params.get("limit"), settings.history_max_limit)
    limiter = read_limiter_of(request, settings)
    busy = limiter.busy  # no slot for a heavy answer: find that out after little work
    budget = settings.heavy_read_bytes if busy else settings.history_max_bytes
    page = await _history_page(hub.backend, project, since, limit, event_filter.matches, budget)
    if busy and page.cut:
        raise limiter.refusal()
    head = history_head(page.position, page.next, page.gap)
    return read_response(request, settings, head, page.frames, b"]}")


def history_head(position: Position, next: int, gap: bool) -> bytes:
    """A history page's JSON up to its events array (history and long polls share it)."""
    return b'{"epoch":%s,"head":%d,"oldest":%d,"next":%d,"more":%s,"gap":%s,"events":[' % (
        _encoder.encode(position.epoch),
        position.head,
        position.oldest,
        next,
        b"true" if next < position.head else b"false",
        b"true" if gap else b"false",
    )


async def snapshot(request: Request) -> Response:
    """The latest event per key, in pages of about `snapshot_page_bytes` (`after`=`next`)."""
    hub, project, event_filter = _read_scope(request)
    settings = hub.settings
    after = parse_since(request.query_params.get("after"), "after") or 0
    limiter = read_limiter_of(request, settings)
    busy = limiter.busy
    budget = settings.heavy_read_bytes if busy else settings.snapshot_page_bytes
    view = await hub.backend.snapshot_view(project)
    position, events = view.position, view.events
    frames, last, more = _snapshot_page(events, after, event_filter.matches, budget)
    if busy and more:
        raise limiter.refusal()
    head = b'{"epoch":%s,"head":%d,"oldest":%d,"truncated":%s,"next":%d,"more":%s,"events":[' % (
        _encoder.encode(position.epoch),
        position.head,
        position.oldest,
        b"true" if view.truncated else b"false",
        last if more else max(after, position.head),
        b"true" if more else b"false",
    )
    return read_response(request, settings, head, frames, b"]}")


_READ_CHUNK = 256  # events per backend read while filling a history page


class _HistoryPage(msgspec.Struct):
    position: Position
    frames: list[bytes]
    next: int  # the last seq scanned: the following page's `since`
    gap: bool
    cut: bool = False  # stopped by the byte budget


async def _history_page(
    backend: Backend,
    project: str,
    since: int,
    limit: int,
    matches: Callable[[StoredEvent], bool],
    max_bytes: int,
    max_frames: int | None = None,
) -> _HistoryPage:
    """Scan at most `limit` events after `since`, keeping matching frames up to `max_bytes`
    (at least one) and `max_frames`, in backend reads of a few hundred events."""
    frames: list[bytes] = []
    cursor, scanned, size = since, 0, 0
    first: Position | None = None
    while True:
        want = min(limit - scanned, _READ_CHUNK)
        result = await backend.read(project, cursor, want)
        if first is None:
            first = result.position
        events = result.events
        if events and scanned and events[0].seq != cursor + 1:
            break  # retention moved past this page while it was read: the next one says gap
        for event in events:
            if matches(event):
                if frames and size + len(event.frame) > max_bytes:
                    gap = _gap(since, first)
                    return _HistoryPage(result.position, frames, cursor, gap, cut=True)
                frames.append(event.frame)
                size += len(event.frame) + 1
                if len(frames) == max_frames:
                    return _HistoryPage(result.position, frames, event.seq, _gap(since, first))
            cursor = event.seq
        scanned += len(events)
        if len(events) < want or scanned >= limit:
            break
    position = result.position
    if not scanned:
        cursor = max(since, position.oldest - 1)
    return _HistoryPage(position, frames, cursor, _gap(since, first))


def _gap(since: int, position: Position) -> bool:
    return since < position.oldest - 1


def _snapshot_page(
    events: list[StoredEvent], after: int, matches: Callable[[StoredEvent], bool], max_bytes: int
) -> tuple[list[bytes], int, bool]:
    """Matching frames of events (in seq order) after `after`, up to `max_bytes` (at least
    one); returns (frames, last seq taken, whether more are left)."""
    frames: list[bytes] = []
    size, last = 0, after
    for event in events[bisect.bisect_right(events, after, key=_seq_of) :]:
        if not matches(event):
            continue
        if frames and size + len(event.frame) > max_bytes:
            return frames, last, True
        frames.append(event.frame)
        size += len(event.frame) + 1
        last = event.seq
    return frames, last, False


def _seq_of(event: StoredEvent) -> int:
    return event.seq


async def schema(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    return json_response(hub.catalog.json_schema())


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    ready = hub.started and await hub.backend.ready()
    body = {"status": "ready" if ready else "not ready", "backend": hub.backend.name}
    return json_response(body, 200 if ready else 503)
