"""Wire protocol v1: frames, close codes, encode/decode and the resume decision.

Pure functions and msgspec types only: no asyncio, no sockets, so every edge case of the
protocol is a fast unit test. docs/protocol.md is the contract this module implements.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any, Final, Literal

import msgspec

from .wire.frames import encode_batch  # re-exported: it lived here first
from .wire.json_rules import DEFAULT_MAX_DEPTH, JsonRuleError, check_json

__all__ = [
    "EVENT_TYPE_RE",
    "MAX_CLOSE_REASON_BYTES",
    "PROJECT_RE",
    "ClientFrame",
    "CloseCode",
    "ErrorFrame",
    "EventFrame",
    "FrameError",
    "GapFrame",
    "PingOp",
    "PongFrame",
    "ReplayedFrame",
    "ResumePlan",
    "ServerFrame",
    "SnapshotFrame",
    "SubscribeOp",
    "SubscribedFrame",
    "UnsubscribeOp",
    "WelcomeFrame",
    "close_reason",
    "decode_client_frame",
    "decode_server_frames",
    "encode",
    "encode_batch",
    "is_valid_event_type",
    "is_valid_project",
    "resume_plan",
]

PROJECT_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
EVENT_TYPE_RE: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,5}$")
MAX_CLOSE_REASON_BYTES: Final = 123


class CloseCode(IntEnum):
    """WebSocket close codes the hub uses (docs/protocol.md, "WebSocket subscription")."""

    NORMAL = 1000
    GOING_AWAY = 1001  # hub shutting down: reconnect with since, with jitter
    UNSUPPORTED_DATA = 1003  # binary frame received
    INVALID_PAYLOAD = 1007  # text frame that is not UTF-8
    POLICY_VIOLATION = 1008  # Origin refused, or too many errors
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # connection limit reached
    UNAUTHORIZED = 4001
    FORBIDDEN = 4003
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4029
    BAD_REQUEST = 4400


def is_valid_project(project: str) -> bool:
    return PROJECT_RE.fullmatch(project) is not None


def is_valid_event_type(event_type: str) -> bool:
    return EVENT_TYPE_RE.fullmatch(event_type) is not None


# --- server -> client frames -------------------------------------------------------------


class WelcomeFrame(msgspec.Struct, tag_field="op", tag="welcome", omit_defaults=True):
    project: str
    epoch: str
    head: int
    oldest: int
    heartbeat: float
    keys: list[str] | None = None  # the key patterns the subscription asked for, if any


class EventFrame(msgspec.Struct, tag_field="op", tag="event", omit_defaults=True):
    project: str
    seq: int
    type: str
    ts: int  # publish time, milliseconds since the Unix epoch
    data: msgspec.Raw | Any = None
    key: str | None = None


class ReplayedFrame(msgspec.Struct, tag_field="op", tag="replayed"):
    count: int
    head: int


class GapFrame(msgspec.Struct, tag_field="op", tag="gap"):
    reason: Literal["evicted", "epoch", "ahead"]
    since: int
    oldest: int
    head: int


class SnapshotFrame(msgspec.Struct, tag_field="op", tag="snapshot"):
    head: int
    events: list[EventFrame]
    truncated: bool = False  # the snapshot's bounds dropped keys in this epoch
    more: bool = False  # a page: the snapshot continues in the next `snapshot` frame


class SubscribedFrame(msgspec.Struct, tag_field="op", tag="subscribed", omit_defaults=True):
    id: int | str | None
    types: list[str]
    keys: list[str] | None = None  # present once the connection asked for keys


class PongFrame(msgspec.Struct, tag_field="op", tag="pong"):
    id: int | str | None = None


class ErrorFrame(msgspec.Struct, tag_field="op", tag="error", omit_defaults=True, kw_only=True):
    code: str
    message: str
    id: int | str | None = None
    retryable: bool  # required, so it is always on the wire (omit_defaults skips defaults)
    close: int | None = None


ServerFrame = (
    WelcomeFrame
    | EventFrame
    | ReplayedFrame
    | GapFrame
    | SnapshotFrame
    | SubscribedFrame
    | PongFrame
    | ErrorFrame
)

# --- client -> server ops ----------------------------------------------------------------


class SubscribeOp(msgspec.Struct, tag_field="op", tag="subscribe", forbid_unknown_fields=True):
    types: list[str] | None = None  # absent: the types stay as they are (one of the two given)
    id: int | str | None = None
    keys: list[str] | None = None  # absent: the key filter stays as it is


class UnsubscribeOp(msgspec.Struct, tag_field="op", tag="unsubscribe", forbid_unknown_fields=True):
    types: list[str] | None = None
    id: int | str | None = None
    keys: list[str] | None = None


class PingOp(msgspec.Struct, tag_field="op", tag="ping", forbid_unknown_fields=True):
    id: int | str | None = None


ClientFrame = SubscribeOp | UnsubscribeOp | PingOp
_CLIENT_OPS: Final = frozenset({"subscribe", "unsubscribe", "ping"})


class _OpOnly(msgspec.Struct):
    op: str


class FrameError(ValueError):
    """A client frame that cannot be understood; `code` is the error frame's code."""

    def __init__(self, code: str, message: str, frame_id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id


class _IdOnly(msgspec.Struct):
    id: int | str | None = None


_encoder: Final = msgspec.json.Encoder()
_op_decoder: Final = msgspec.json.Decoder(_OpOnly)
_id_decoder: Final = msgspec.json.Decoder(_IdOnly)
_client_decoder: Final = msgspec.json.Decoder(ClientFrame)
_server_decoder: Final = msgspec.json.Decoder(ServerFrame | list[ServerFrame])


def encode(frame: Any) -> bytes:
    """Encode one frame (or any msgspec-encodable value) to JSON bytes."""
    return _encoder.encode(frame)


def _frame_id(data: bytes | str) -> int | str | None:
    try:
        return _id_decoder.decode(data).id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def decode_client_frame(data: bytes | str, max_depth: int = DEFAULT_MAX_DEPTH) -> ClientFrame:
    """Decode one client op, raising FrameError with a message fit to show the client.

    The input rules run first: msgspec decodes (and skips unknown fields) recursively, so
    deep nesting must be refused before it sees the frame.
    """
    try:
        check_json(data, max_depth)
    except JsonRuleError as exc:
        raise FrameError("bad_request", f"invalid frame: {exc.message}") from None
    try:
        op = _op_decoder.decode(data).op
    except msgspec.ValidationError as exc:
        raise FrameError(
            "bad_request", f"frame must be an object with a string 'op': {exc}", _frame_id(data)
        ) from None
    except msgspec.DecodeError as exc:
        raise FrameError("malformed_json", f"malformed JSON: {exc}") from None
    if op not in _CLIENT_OPS:
        raise FrameError("bad_request", f"unknown op {op[:40]!r}", _frame_id(data))
    try:
        frame = _client_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise FrameError("bad_request", f"invalid {op}: {exc}", _frame_id(data)) from None
    if not isinstance(frame, PingOp) and frame.types is None and frame.keys is None:
        raise FrameError("bad_request", f"invalid {op}: give `types`, `keys` or both", frame.id)
    return frame


def decode_server_frames(data: bytes | str) -> list[ServerFrame]:
    """Decode a server frame or an array of them (clients MUST accept both)."""
    decoded = _server_decoder.decode(data)
    return decoded if isinstance(decoded, list) else [decoded]


def close_reason(message: str) -> str:
    """Trim a close reason to the 123 bytes a close frame can carry, on a UTF-8 boundary."""
    raw = message.encode()
    if len(raw) <= MAX_CLOSE_REASON_BYTES:
        return message
    return raw[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


# --- resume decision ---------------------------------------------------------------------


class ResumePlan(msgspec.Struct, frozen=True):
    """What to do for a subscriber on connect: 'live', 'replay' (from since) or 'gap'."""

    action: Literal["live", "replay", "gap"]
    since: int
    reason: Literal["evicted", "epoch", "ahead"] | None = None


def resume_plan(
    since: int | None, epoch: str | None, current_epoch: str, oldest: int, head: int
) -> ResumePlan:
    """Decide replay, gap or live for a subscriber that last saw `since` in `epoch`.

    `oldest` is the smallest retained seq (head + 1 when nothing is retained), `head` the
    largest assigned seq (0 before the first event).
    """
    if since is None:
        return ResumePlan("live", head)
    if epoch is not None and epoch != current_epoch:
        return ResumePlan("gap", since, "epoch")
    if since > head:
        return ResumePlan("gap", since, "ahead")
    if since < oldest - 1:
        return ResumePlan("gap", since, "evicted")
    return ResumePlan("replay", since)
