"""The publishing side: POST bench events over keep-alive HTTP/1.1, paced or as fast as possible.

A hand-written HTTP/1.1 client (one request in flight per connection, Content-Length or
chunked responses) because the publisher shares two cores with the hub and the subscribers:
an httpx request costs several times the CPU of the few bytes written here.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

import msgspec

from . import hdr

__all__ = ["HttpConnection", "PublishPlan", "PublishResult", "Publisher"]

EVENT_TYPE: Final = "bench.tick"
RETRY_STATUSES: Final = frozenset({429, 503})
RETRIES: Final = 5


class _Seqs(msgspec.Struct):
    seqs: list[int]


_decode_seqs: Final = msgspec.json.Decoder(_Seqs).decode


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; reopened when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.authority = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.authority, len(body), body)
        )
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip().lower()
            if headers.get(b"transfer-encoding") == b"chunked":
                payload = await self._read_chunked(reader)
            else:
                payload = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        except (asyncio.IncompleteReadError, ValueError, ConnectionError):
            await self.close()
            raise ConnectionError("publish connection failed mid-response") from None
        if headers.get(b"connection") == b"close":
            await self.close()
        return status, payload

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


@dataclass(frozen=True)
class PublishPlan:
    projects: list[str]
    events: int  # total, spread round-robin over the projects, one project per request
    rate: float  # events per second; 0 publishes as fast as the hub acknowledges
    batch: int  # most events per request
    concurrency: int  # requests in flight (one connection each)
    pad: int  # bytes of padding in each event's data
    max_seconds: float


@dataclass
class PublishResult:
    published: int = 0
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    heads: dict[str, int] = field(default_factory=dict)  # project -> highest seq acknowledged
    seq_counts: Counter[str] = field(default_factory=Counter)
    seq_mins: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    request_hist: object = None

    def seq_anomalies(self) -> int:
        """Seqs the hub skipped or repeated in its answers (0 when only we publish)."""
        return sum(
            abs(self.heads[p] - self.seq_mins[p] + 1 - self.seq_counts[p]) for p in self.heads
        )


class Publisher:
    def __init__(self, host: str, port: int, plan: PublishPlan) -> None:
        self.host = host
        self.port = port
        self.plan = plan
        self.result = PublishResult()
        self.hist = hdr.new_histogram()
        self.result.request_hist = self.hist
        self.reserved = 0
        self._posts = 0
        self._pad = b"x" * plan.pad
        self._stop = False

    @property
    def published(self) -> int:
        return self.result.published

    def stop(self) -> None:
        self._stop = True

    async def run(self) -> PublishResult:
        self.result.started = time.time()
        t0 = time.monotonic()
        await asyncio.gather(*(self._loop(t0) for _ in range(self.plan.concurrency)))
        self.result.finished = time.time()
        return self.result

    def _body(self, first: int, n: int) -> bytes:
        events = [
            b'{"type":"%s","data":{"n":%d,"pad":"%s"}}' % (EVENT_TYPE.encode(), i, self._pad)
            for i in range(first, first + n)
        ]
        return events[0] if n == 1 else b"[" + b",".join(events) + b"]"

    async def _loop(self, t0: float) -> None:
        plan = self.plan
        conn = HttpConnection(self.host, self.port)
        deadline = t0 + plan.max_seconds
        try:
            while not self._stop and self.reserved < plan.events:
                now = time.monotonic()
                if now >= deadline:
                    break
                n = min(plan.batch, plan.events - self.reserved)
                if plan.rate > 0:
                    due = int((now - t0) * plan.rate) + 1 - self.reserved
                    if due <= 0:  # ahead of schedule: wait for the next event's slot
                        await asyncio.sleep((self.reserved - (now - t0) * plan.rate) / plan.rate)
                        continue
                    n = min(n, due)
                first = self.reserved
                self.reserved += n
                project = plan.projects[self._posts % len(plan.projects)]
                self._posts += 1
                await self._post(conn, project, self._body(first, n), n)
        finally:
            await conn.close()

    async def _post(self, conn: HttpConnection, project: str, body: bytes, n: int) -> None:
        path = f"/v1/projects/{quote(project)}/events"
        result = self.result
        for attempt in range(RETRIES):
            t = time.perf_counter()
            try:
                status, payload = await conn.post(path, body)
            except OSError as exc:  # ConnectionError included; not retried: it may have landed
                result.errors[type(exc).__name__] += 1
                return
            self.hist.record_value(max(1, int((time.perf_counter() - t) * 1e6)))
            result.requests += 1
            if status in RETRY_STATUSES and attempt < RETRIES - 1:
                result.errors[f"http_{status}_retried"] += 1
                await asyncio.sleep(0.05 * 2**attempt)
                continue
            break
        if status not in (200, 201, 202):
            result.errors[f"http_{status}"] += 1
            return
        try:
            seqs = _decode_seqs(payload).seqs
        except msgspec.MsgspecError:
            result.errors["bad_response"] += 1
            return
        if seqs:
            result.published += len(seqs)
            result.seq_counts[project] += len(seqs)
            result.heads[project] = max(result.heads.get(project, 0), max(seqs))
            result.seq_mins[project] = min(result.seq_mins.get(project, seqs[0]), min(seqs))
        if len(seqs) != n:
            result.errors["seq_count_mismatch"] += 1
