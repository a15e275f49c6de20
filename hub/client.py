"""Python client: `async for frame in HubClient(url, project, ...)`.

Reconnects with jittered exponential backoff, resumes with `since` + `epoch`, drops
duplicates by seq, accepts array frames and hands `gap` / `snapshot` to the caller, who
must rebuild state from the snapshot (one sent in pages is handed over once, whole). A
client that has seen no event yet resumes from the `head` of its first `welcome`, so a
drop before the first event loses nothing either.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .protocol import (
    CloseCode,
    ErrorFrame,
    EventFrame,
    GapFrame,
    ReplayedFrame,
    SnapshotFrame,
    WelcomeFrame,
    decode_server_frames,
)

__all__ = ["ClientFrame", "HubClient", "HubClientError"]

logger = logging.getLogger("hub.client")

ClientFrame = EventFrame | GapFrame | SnapshotFrame

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
    """The hub refused this client for a reason reconnecting will not fix."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


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
    ) -> None:
        self.url = url
        self.project = project
        self.types = list(types) if types else None
        self.last_seq = since
        self.epoch = epoch
        self.token = token
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_attempts = max_attempts
        self.open_timeout = open_timeout
        self.state: Literal["idle", "connecting", "open", "closed"] = "idle"
        self.connects = 0  # successful connections so far
        self.duplicates_dropped = 0
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
        self.state = "closed"
        if self._ws is not None:
            await self._ws.close()

    def __aiter__(self) -> AsyncIterator[ClientFrame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[ClientFrame]:
        attempt = 0
        while not self._closing:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            self.state = "connecting"
            try:
                async with connect(
                    self.ws_url(),
                    additional_headers=headers,
                    open_timeout=self.open_timeout,
                    max_size=None,
                ) as ws:
                    self._ws = ws
                    async for message in ws:
                        for frame in decode_server_frames(message):
                            if isinstance(frame, WelcomeFrame):
                                self._on_welcome(frame)
                                attempt = 0
                                continue
                            out = self._accept(frame)
                            if out is not None:
                                yield out
                    code = ws.close_code
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (400, 401, 403, 404):
                    raise HubClientError(f"handshake refused with HTTP {status}") from exc
                code = None
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                logger.debug("connect failed: %s", exc)
                code = None
            finally:
                self._ws = None
            if self._closing:
                break
            if code is not None and code in FATAL_CLOSE_CODES:
                self.state = "closed"
                detail = self.last_error.message if self.last_error else ""
                if code == CloseCode.NORMAL:
                    return
                raise HubClientError(f"closed by hub with {code}: {detail}", code)
            attempt += 1
            if self.max_attempts is not None and attempt > self.max_attempts:
                raise HubClientError(f"gave up after {self.max_attempts} attempts", code)
            delay = random.uniform(0, min(self.backoff_max, self.backoff_initial * 2**attempt))
            logger.info(
                "reconnecting in %.2fs (close code %s, since %s)", delay, code, self.last_seq
            )
            await asyncio.sleep(delay)
        self.state = "closed"

    def _on_welcome(self, frame: WelcomeFrame) -> None:
        self._snapshot_pages = []  # a new connection: pages of a cut one are void
        self.welcome = frame
        self.connects += 1
        self.state = "open"
        if self.last_seq is None:
            self.last_seq = frame.head  # nothing seen yet: resume from here after a drop
        if self.epoch is None:
            self.epoch = frame.epoch
        self.last_error = None

    def _accept(self, frame: object) -> ClientFrame | None:
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
                frame = SnapshotFrame(frame.head, self._snapshot_pages + frame.events)
                self._snapshot_pages = []
            # The snapshot replaces history: continue from its head in the current epoch.
            assert self.welcome is not None
            self.epoch = self.welcome.epoch
            self.last_seq = frame.head
            return frame
        if isinstance(frame, ErrorFrame):
            self.last_error = frame
            logger.warning("hub error %s: %s", frame.code, frame.message)
        elif isinstance(frame, ReplayedFrame):
            logger.debug("replayed %d events up to %d", frame.count, frame.head)
        return None
