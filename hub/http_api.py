"""HTTP routes: publish, history page, snapshot, schema, health and readiness.

Each project route checks the token's grant (`authorize`); publishing also passes the rate
limits. The AuthGate middleware has already refused requests without a valid token.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .auth import authorize
from .backends.base import PublishRequest
from .core import Hub
from .errors import BadRequest, EventValidationError, HubError, PayloadTooLarge, Unauthorized
from .json_rules import JsonRuleError, check_json
from .limits import OverCapacity, RateLimitExceeded, RequestTimeout, check_publish_rate
from .subscription import parse_since
from .topics import parse_types_param

__all__ = [
    "error_response",
    "healthz",
    "history",
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
    elif isinstance(exc, RateLimitExceeded):
        response.headers["Retry-After"] = exc.retry_after_header
    elif isinstance(exc, OverCapacity):
        response.headers["Retry-After"] = "1"
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
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise BadRequest(f"invalid limit {raw[:40]!r}: expected an integer >= 1")
    return min(int(raw), maximum)


async def history(request: Request) -> Response:
    """A page of retained events after `since`; `next` is where the following page starts."""
    hub: Hub = request.app.state.hub
    project = request.path_params["project"]
    hub.check_project(project)
    principal = authorize(request, project, "subscribe")
    settings = hub.settings
    since = parse_since(request.query_params.get("since")) or 0
    limit = _parse_limit(request.query_params.get("limit"), settings.history_max_limit)
    type_filter = principal.type_filter(
        parse_types_param(
            request.query_params.get("types"), settings.max_patterns, settings.max_pattern_length
        )
    )
    result = await hub.backend.read(project, since, limit)
    position = result.position
    events = result.events
    frames = [e.frame for e in events if type_filter.matches(e.type)]
    next_since = events[-1].seq if events else max(since, position.oldest - 1)
    gap = since < position.oldest - 1
    head = b'{"epoch":%s,"head":%d,"oldest":%d,"next":%d,"more":%s,"gap":%s,"events":[' % (
        _encoder.encode(position.epoch),
        position.head,
        position.oldest,
        next_since,
        b"true" if next_since < position.head else b"false",
        b"true" if gap else b"false",
    )
    return json_response(head + b",".join(frames) + b"]}")


async def snapshot(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    project = request.path_params["project"]
    hub.check_project(project)
    principal = authorize(request, project, "subscribe")
    settings = hub.settings
    type_filter = principal.type_filter(
        parse_types_param(
            request.query_params.get("types"), settings.max_patterns, settings.max_pattern_length
        )
    )
    view = await hub.backend.snapshot_view(project)
    position, events = view.position, view.events
    frames = [e.frame for e in events if type_filter.matches(e.type)]
    head = b'{"epoch":%s,"head":%d,"oldest":%d,"truncated":%s,"events":[' % (
        _encoder.encode(position.epoch),
        position.head,
        position.oldest,
        b"true" if view.truncated else b"false",
    )
    return json_response(head + b",".join(frames) + b"]}")


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
