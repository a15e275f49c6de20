"""`GET /v1/projects/{project}/events?wait=S`: a history page that waits for its first event.

Without `wait` the route answers today's history page (http_api.history). With it, the poll
registers a waiter (hub.fanout.poll_waiters) before reading, then reads the history page
after `since`: matching events are answered at once; otherwise it waits until the fan-out
says the project has a new matching event, and reads again, from where the last read ended.
After `wait` seconds it answers `events: []` with `next` at the head. A `since` the project
no longer holds (another epoch, older than retention, ahead of the head) is answered at once
with `gap: true`: the client takes a snapshot and polls on from the snapshot's head.

Bounded: `wait` <= `long_poll_max_wait_s`, `max_long_polls` waiting per process (beyond:
503), a connection place while waiting (`max_connections` and its per-token and per-address
limits, as WebSocket and SSE), an early answer when the hub drains, and a client that goes
away frees its places at once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from ..auth import authenticate
from ..backends.base import Position, StoredEvent
from ..core import Hub
from ..errors import BadRequest
from ..fanout.poll_waiters import PollWaiter
from ..limits import admit_connection
from ..protocol import resume_plan
from ..wire.subscription import parse_since
from . import http_api
from .read_limits import read_limiter_of, read_response

__all__ = ["events_get", "long_poll", "parse_epoch", "parse_wait"]

_WAIT_RE: Final = re.compile(r"[0-9]{1,7}(\.[0-9]{1,6})?")


def parse_wait(raw: str, maximum: float) -> float:
    """`wait` in seconds: a plain decimal number, 0 < wait <= `maximum`."""
    if not raw.isascii() or _WAIT_RE.fullmatch(raw) is None:
        raise BadRequest(
            f"invalid wait {raw[:40]!r}: expected seconds as a decimal number, e.g. wait=25"
        )
    wait = float(raw)
    if wait <= 0:
        raise BadRequest("invalid wait: must be > 0 (leave it out for a page without waiting)")
    if wait > maximum:
        raise BadRequest(f"invalid wait {raw[:40]!r}: at most {maximum:g} seconds on this hub")
    return wait


def parse_epoch(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if len(raw) > 64 or not raw.isprintable():
        raise BadRequest("invalid epoch: at most 64 printable characters")
    return raw


async def events_get(request: Request) -> Response:
    """`GET .../events`: a long poll with `wait`, else a plain history page."""
    raw_wait = request.query_params.get("wait")
    if raw_wait is None:
        return await http_api.history(request)
    return await long_poll(request, raw_wait)


async def long_poll(request: Request, raw_wait: str) -> Response:
    hub, project, event_filter = http_api._read_scope(request)
    settings = hub.settings
    query = request.query_params
    wait_s = parse_wait(raw_wait, settings.long_poll_max_wait_s)
    since = parse_since(query.get("since")) or 0
    epoch = parse_epoch(query.get("epoch"))
    limit = http_api._parse_limit(query.get("limit"), settings.history_max_limit)
    # What the history page keeps, and what wakes the waiter: the same filter.
    matches = event_filter.matches

    deadline = asyncio.get_running_loop().time() + wait_s
    # A waiting poll is a subscriber: it takes a connection place (total, per token, per
    # address) as well as one of the long-poll places.
    slot = admit_connection(request, authenticate(request))
    try:
        async with hub.manager.polls.waiting(project, event_filter) as waiter:
            gone = asyncio.create_task(_client_gone(request.receive))
            gone.add_done_callback(lambda _: waiter.release())
            try:
                poll = _Poll(request, hub, project, matches, limit, waiter)
                return await poll.answer(since, epoch, deadline)
            finally:
                gone.cancel()
    finally:
        slot.release()


class _Poll:
    """One poll's reads: the history page after `since`, again each time the waiter wakes."""

    def __init__(
        self,
        request: Request,
        hub: Hub,
        project: str,
        matches: Callable[[StoredEvent], bool],
        limit: int,
        waiter: PollWaiter,
    ) -> None:
        self.request = request
        self.hub = hub
        self.project = project
        self.matches = matches
        self.limit = limit
        self.waiter = waiter

    async def answer(self, since: int, epoch: str | None, deadline: float) -> Response:
        backend, waiter, loop = self.hub.backend, self.waiter, asyncio.get_running_loop()
        # After the waiter is registered: with Redis, the first position() after a watch pins
        # where this instance's reader starts, so every later event wakes us.
        first = await backend.position(self.project)
        plan = resume_plan(since, epoch, first.epoch, first.oldest, first.head)
        if plan.action == "gap":
            return self._page(first, first.head, gap=True)
        cursor = since
        while True:
            waiter.arm()
            page, busy = await self._read(cursor)
            position = page.position
            if page.gap or position.epoch != first.epoch:
                return self._page(position, position.head, gap=True)
            if page.frames:
                if busy and page.cut:
                    raise read_limiter_of(self.request, self.hub.settings).refusal()
                return self._page(position, page.next, frames=page.frames)
            cursor = page.next
            if cursor < position.head:
                await asyncio.sleep(0)  # `limit` events did not match: scan on, fairly
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or waiter.released or not await waiter.wait(remaining):
                # Nothing new in time (or the hub drains, or the client left): poll again
                # from here.
                return self._page(position, cursor)

    async def _read(self, cursor: int) -> tuple[http_api._HistoryPage, bool]:
        """The history page after `cursor`, and whether heavy reads were all taken."""
        settings = self.hub.settings
        busy = read_limiter_of(self.request, settings).busy
        budget = settings.heavy_read_bytes if busy else settings.history_max_bytes
        # Scan at least a full page per read whatever `limit` is: a poll whose filter matches
        # nothing scans up to the head, and `limit=1` made that one step per event.
        scan = max(self.limit, settings.history_max_limit)
        page = await http_api._history_page(
            self.hub.backend, self.project, cursor, scan, self.matches, budget, self.limit
        )
        return page, busy

    def _page(
        self, position: Position, next: int, *, gap: bool = False, frames: Sequence[bytes] = ()
    ) -> Response:
        head = http_api.history_head(position, next, gap)
        return read_response(self.request, self.hub.settings, head, frames, b"]}")


async def _client_gone(receive: Receive) -> None:
    """Returns when the client disconnects (a GET's empty body is read first)."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except OSError:  # the server lost the connection: as good as a disconnect
        return
