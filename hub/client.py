"""Python client: `async for frame in HubClient(url, project, ...)`.

Reconnects with jittered exponential backoff, resumes with `since` + `epoch`, drops
duplicates by seq, accepts array frames and hands `gap` / `snapshot` to the caller, who
must rebuild state from the snapshot (one sent in pages is handed over once, whole). A
client that has seen no event yet resumes from the `head` of its first `welcome`, so a drop
before the first event loses nothing either.

A frame it cannot decode (invalid UTF-8, a number msgspec cannot hold, ...) is handed to the
caller as an `UndecodableFrame` and the connection goes on: the other frames of an array
frame are still delivered, and when the bad one is an event whose seq can be read, the
client moves past it. The backoff starts over only once a connection has delivered an event
or stayed open for `healthy_after` seconds, so a hub that drops it right after `welcome`
is not hammered.

Connecting (TCP, TLS and the WebSocket handshake) is bounded by `open_timeout` per attempt.
`state` (idle, connecting, open, reconnecting, closed) and `on_state` report progress, e.g.
for `hub tail` to print it; `give_up_after` seconds without an open connection raise
`HubUnreachable`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Final, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .protocol import (
    CloseCode,
    ErrorFrame,
    EventFrame,
    GapFrame,
    ReplayedFrame,
    ServerFrame,
    SnapshotFrame,
    WelcomeFrame,
    decode_server_frames,
)

__all__ = [
    "ClientFrame",
    "ClientState",
    "HubClient",
    "HubClientError",
    "HubUnreachable",
    "StateChange",
    "UndecodableFrame",
    "decode_frames",
]

logger = logging.getLogger("hub.client")


class UndecodableFrame(msgspec.Struct, frozen=True):
    """A frame, or one element of an array frame, that this client could not decode.

    `raw` is what arrived, `error` why it failed, `seq` the event's seq if it could be read.
    """

    raw: bytes
    error: str
    seq: int | None = None


ClientFrame = EventFrame | GapFrame | SnapshotFrame | UndecodableFrame


class _SeqOnly(msgspec.Struct):
    op: str
    seq: int | None = None


_frame_decoder: Final = msgspec.json.Decoder(ServerFrame)
_elements_decoder: Final = msgspec.json.Decoder(list[msgspec.Raw])
_seq_decoder: Final = msgspec.json.Decoder(_SeqOnly)
_EVENT_HEAD: Final = re.compile(rb'\{"op":"event","project":"[^"\\]*","seq":(\d{1,19}),')
_DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def decode_frames(message: bytes) -> list[ServerFrame | UndecodableFrame]:
    """Decode a message (a frame or an array of them); what fails becomes UndecodableFrame."""
    try:
        return list(decode_server_frames(message))
    except _DECODE_ERRORS:
        pass
    try:
        elements = (
            [bytes(e) for e in _elements_decoder.decode(message)]
            if message.lstrip()[:1] == b"["
            else [message]
        )
    except _DECODE_ERRORS:
        elements = [message]
    frames: list[ServerFrame | UndecodableFrame] = []
    for element in elements:
        try:
            frames.append(_frame_decoder.decode(element))
        except _DECODE_ERRORS as exc:
            frames.append(UndecodableFrame(element, str(exc) or type(exc).__name__, _seq(element)))
    return frames


def _seq(element: bytes) -> int | None:
    try:
        head = _seq_decoder.decode(element)
    except _DECODE_ERRORS:
        # Too deep to skip: the hub writes op, project and seq before data.
        match = _EVENT_HEAD.match(element)
        return int(match[1]) if match else None
    return head.seq if head.op == "event" else None


# Close codes after which reconnecting cannot help: the client must change something.
FATAL_CLOSE_CODES = frozenset(
    {
        CloseCode.NORMAL,
        CloseCode.UNSUPPORTED_DATA,
        CloseCode.INVALID_PAYLOAD,
        CloseCode.POLICY_VIOLATION,
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.UNAUTHORIZED,
        CloseCode.FORBIDDEN,
        CloseCode.BAD_REQUEST,
    }
)


class HubClientError(Exception):
    """The hub refused this client for a reason reconnecting will not fix.

    `code` is the close code, `status` the HTTP status of a refused handshake, `detail` the
    hub's own message (its error frame) when it sent one.
    """

    def __init__(
        self, message: str, code: int | None = None, *, status: int | None = None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.detail = detail


class HubUnreachable(HubClientError):
    """No connection could be opened within `give_up_after` seconds (or `max_attempts`)."""


ClientState = Literal["idle", "connecting", "open", "reconnecting", "closed"]


class StateChange(msgspec.Struct, frozen=True):
    """What `on_state` receives: the new state, the attempt number since the backoff last
    started over, the delay before the next attempt (reconnecting) and why it failed."""

    state: ClientState
    attempt: int = 0
    delay: float | None = None
    reason: str | None = None


def _checked_keys(keys: Sequence[str] | None) -> list[str] | None:
    """`keys` as sent in the query string, where `,` separates patterns (docs/protocol.md)."""
    if keys is None:
        return None
    if isinstance(keys, str) or not keys or any(not k or "," in k for k in keys):
        raise ValueError("keys: a non-empty list of patterns without ',' (None: every key)")
    return list(keys)


class HubClient:
    def __init__(
        self,
        url: str,
        project: str,
        *,
        types: Sequence[str] | None = None,
        since: int | None = None,
        epoch: str | None = None,
        token: str | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        max_attempts: int | None = None,
        open_timeout: float = 10.0,
        healthy_after: float = 5.0,
        on_state: Callable[[StateChange], None] | None = None,
        give_up_after: float | None = None,
        rng: random.Random | None = None,
        keys: Sequence[str] | None = None,
    ) -> None:
        self.url = url
        self.project = project
        self.types = list(types) if types else None
        self.keys = _checked_keys(keys)
        self.last_seq = since
        self.epoch = epoch
        self.token = token
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_attempts = max_attempts
        self.open_timeout = open_timeout
        self.healthy_after = healthy_after  # open this long (or an event): backoff starts over
        self.on_state = on_state  # called on every state change (must not block)
        self.give_up_after = give_up_after  # seconds without an open connection: give up
        self._rng = rng or random.Random()  # the backoff's jitter (seed it to replay a test)
        self.state: ClientState = "idle"
        self.attempt = 0  # failed attempts since the backoff last started over
        self.connects = 0  # successful connections so far
        self.duplicates_dropped = 0
        self.undecodable = 0  # frames handed to the caller as UndecodableFrame
        self.welcome: WelcomeFrame | None = None
        self.last_error: ErrorFrame | None = None
        self._ws: ClientConnection | None = None
        self._closing = False
        self._snapshot_pages: list[EventFrame] = []  # events of `more` pages so far

    def ws_url(self) -> str:
        parts = urlsplit(self.url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        query: dict[str, str] = {}
        if self.last_seq is not None:
            query["since"] = str(self.last_seq)
            if self.epoch is not None:
                query["epoch"] = self.epoch
        if self.types:
            query["types"] = ",".join(self.types)
        if self.keys is not None:
            query["keys"] = ",".join(self.keys)
        path = f"{parts.path.rstrip('/')}/v1/projects/{self.project}/ws"
        return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        self._set_state("closed")
        if self._ws is not None:
            await self._ws.close()

    def __aiter__(self) -> AsyncIterator[ClientFrame]:
        return self._frames()

    def _set_state(
        self, state: ClientState, delay: float | None = None, reason: str | None = None
    ) -> None:
        if state == "closed" and self.state == "closed":
            return  # close() and the end of iteration both report it: once is enough
        self.state = state
        if self.on_state is not None:
            self.on_state(StateChange(state, self.attempt, delay, reason))

    async def _frames(self) -> AsyncIterator[ClientFrame]:
        self.attempt = 0
        loop = asyncio.get_running_loop()
        down_since = loop.time()  # when the last open connection ended (or we started)
        while not self._closing:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            self._set_state("connecting")
            opened_at: float | None = None
            delivered = 0
            reason: str | None = None
            try:
                async with connect(
                    self.ws_url(),
                    additional_headers=headers,
                    open_timeout=self._open_timeout(down_since, loop.time()),
                    max_size=None,
                ) as ws:
                    self._ws = ws
                    while True:
                        # Undecoded bytes: invalid UTF-8 in one event must not close the socket.
                        message = await ws.recv(decode=False)
                        for frame in decode_frames(message):
                            if isinstance(frame, WelcomeFrame):
                                opened_at = loop.time()
                                self._on_welcome(frame)
                                continue
                            out = self._accept(frame)
                            if out is not None:
                                delivered += isinstance(out, EventFrame)
                                yield out
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                reason = f"connection closed ({code})" if code else "connection lost"
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (400, 401, 403, 404):
                    self._set_state("closed")
                    detail = _error_message(bytes(exc.response.body or b""))
                    raise HubClientError(
                        f"handshake refused with HTTP {status}", status=status, detail=detail
                    ) from exc
                code = None
                reason = f"handshake answered with HTTP {status}"
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                logger.debug("connect failed: %s", exc)
                code = None
                reason = _connect_failure(exc, self.open_timeout)
            finally:
                self._ws = None
            if self._closing:
                break
            now = loop.time()
            if opened_at is not None:
                down_since = now
            if delivered or (opened_at is not None and now - opened_at >= self.healthy_after):
                self.attempt = 0  # a healthy connection: the next drop starts the backoff over
            if code is not None and code in FATAL_CLOSE_CODES:
                self._set_state("closed")
                detail = self.last_error.message if self.last_error else ""
                if code == CloseCode.NORMAL:
                    return
                raise HubClientError(f"closed by hub with {code}: {detail}", code, detail=detail)
            self.attempt += 1
            if self.max_attempts is not None and self.attempt > self.max_attempts:
                self._set_state("closed")
                raise HubUnreachable(f"gave up after {self.max_attempts} attempts: {reason}", code)
            delay = self.backoff_delay(self.attempt)
            if self.give_up_after is not None:
                left = down_since + self.give_up_after - now
                if left <= 0:
                    self._set_state("closed")
                    raise HubUnreachable(
                        f"gave up after {self.give_up_after:g}s without a connection: {reason}",
                        code,
                    )
                delay = min(delay, left)  # one last attempt right at the deadline
            logger.info(
                "reconnecting in %.2fs (close code %s, since %s)", delay, code, self.last_seq
            )
            self._set_state("reconnecting", delay, reason)
            await asyncio.sleep(delay)
        self._set_state("closed")

    def _open_timeout(self, down_since: float, now: float) -> float:
        """`open_timeout`, cut to what is left of `give_up_after` (a blackholed address must
        not outlast it)."""
        if self.give_up_after is None:
            return self.open_timeout
        return max(0.05, min(self.open_timeout, down_since + self.give_up_after - now))

    def backoff_delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(backoff_max, backoff_initial * 2**attempt)]."""
        cap = min(self.backoff_max, self.backoff_initial * 2**attempt)
        return self._rng.uniform(0, cap)

    def _on_welcome(self, frame: WelcomeFrame) -> None:
        self._snapshot_pages = []  # a new connection: pages of a cut one are void
        self.welcome = frame
        self.connects += 1
        self._set_state("open")
        if self.last_seq is None:
            self.last_seq = frame.head  # nothing seen yet: resume from here after a drop
        if self.epoch is None:
            self.epoch = frame.epoch
        self.last_error = None

    def _accept(self, frame: object) -> ClientFrame | None:
        if isinstance(frame, UndecodableFrame):
            if frame.seq is not None:
                if self.last_seq is not None and frame.seq <= self.last_seq:
                    self.duplicates_dropped += 1
                    return None
                self.last_seq = frame.seq  # move past it: a resume must not replay it forever
            self.undecodable += 1
            logger.warning("undecodable frame (seq %s): %s", frame.seq, frame.error)
            return frame
        if isinstance(frame, EventFrame):
            if self.last_seq is not None and frame.seq <= self.last_seq:
                self.duplicates_dropped += 1
                return None
            self.last_seq = frame.seq
            return frame
        if isinstance(frame, GapFrame):
            return frame
        if isinstance(frame, SnapshotFrame):
            if frame.more:  # a page: hand the snapshot over once it is whole
                self._snapshot_pages.extend(frame.events)
                return None
            if self._snapshot_pages:
                frame = SnapshotFrame(
                    frame.head, self._snapshot_pages + frame.events, truncated=frame.truncated
                )
                self._snapshot_pages = []
            # The snapshot replaces history: continue from its head in the current epoch.
            assert self.welcome is not None
            self.epoch = self.welcome.epoch
            self.last_seq = frame.head
            return frame
        if isinstance(frame, ErrorFrame):
            self.last_error = frame
            # One that closes for good is raised as HubClientError with this message: the
            # caller reports it, a warning would say it twice.
            fatal = frame.close is not None and frame.close in FATAL_CLOSE_CODES
            level = logging.DEBUG if fatal else logging.WARNING
            logger.log(level, "hub error %s: %s", frame.code, frame.message)
        elif isinstance(frame, ReplayedFrame):
            logger.debug("replayed %d events up to %d", frame.count, frame.head)
        return None


def _connect_failure(exc: BaseException, open_timeout: float) -> str:
    """Why an attempt failed, in words a person can act on."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {open_timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _ErrorBody(msgspec.Struct):
    error: dict[str, object] | None = None


def _error_message(body: bytes) -> str:
    """The `error.message` of the hub's JSON error body, if that is what the answer holds."""
    try:
        message = msgspec.json.decode(body, type=_ErrorBody).error or {}
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    text = message.get("message")
    return text if isinstance(text, str) else ""
