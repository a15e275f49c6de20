"""Publish to a hub over HTTP from another process: `HubPublisher` (async) and
`SyncHubPublisher` (threads, scripts).

    async with HubPublisher("http://127.0.0.1:8080", "demo", token=...) as publisher:
        seq = await publisher.publish("ingest.job.updated", JobUpdated(...), key="ingest.job/j1")

- Every event gets an idempotency `id` (a random one when the caller gives none) before its
  first attempt, and every retry resends that same id: a retry after a lost answer or a hub
  restart never publishes twice (docs/protocol.md, "Publishing over HTTP").
- Events are encoded (msgspec Structs, dicts, ...) and checked when `publish` is called, against
  `catalog` when one is given (typed payloads, `EventValidationError` naming the field), so a
  caller may change its object afterwards and a bad event fails alone, before any batch.
- Batching: events waiting while a request is in flight, or within `linger` seconds, go in one
  POST of up to `max_batch_events` events and `max_batch_bytes` bytes; each caller gets its own
  seq. One request is in flight at a time, so events are published in the order given.
- Retries: connection errors, 408, 429, 500, 502, 503, 504, with full-jitter exponential backoff
  (429 / 503 wait what `Retry-After` says), for at most `retries` retries and `max_retry_time`
  seconds in all; then `PublishFailed`. Other 4xx are not retried: 422 raises the hub's
  `EventValidationError`, the rest `PublishRejected` (with `status`).
- Events not yet sent hold at most `max_queued_bytes` (64 MiB) encoded: beyond it `publish`
  raises `PublisherFull` at once (the hub is slower than the caller; slow down or retry),
  so a caller that outruns an unreachable hub cannot fill its own memory.
- Connecting is bounded by `connect_timeout`, each request by `timeout`: its whole answer, not
  each read (a server trickling bytes cannot hold a publisher), and an answer is at most 1 MiB
  (a hub's is a few KiB; a server flooding one cannot fill the publisher's memory).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import random
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

import httpx
import msgspec

from .errors import EventValidationError
from .wire.catalog import EventCatalog

__all__ = [
    "HubPublisher",
    "PublishFailed",
    "PublishRejected",
    "PublisherFull",
    "SyncHubPublisher",
    "new_event_id",
]

logger = logging.getLogger("hub.publisher")

RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
MAX_ANSWER_BYTES: Final = 1024 * 1024  # a hub's answer: seqs of one batch, or an error
_encoder: Final = msgspec.json.Encoder()
T = TypeVar("T")


def new_event_id() -> str:
    return uuid.uuid4().hex


class PublishRejected(ValueError):
    """The hub refused the event (a 4xx other than 422): retrying cannot help.

    A 422 (invalid typed data) raises the hub's own `EventValidationError` instead, whose
    message names the bad field (e.g. `$.data.progress`), as in-process publishing does.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class PublishFailed(RuntimeError):
    """The hub stayed unreachable or unavailable through every retry."""


class PublisherFull(RuntimeError):
    """`max_queued_bytes` of events wait to be sent: the hub is slower than the caller."""


class _Queued:
    __slots__ = ("body", "future")

    def __init__(self, body: bytes, future: asyncio.Future[int]) -> None:
        self.body = body
        self.future = future


class HubPublisher:
    """Publishes events to `POST {url}/v1/projects/{project}/events` (see the module doc)."""

    def __init__(
        self,
        url: str,
        project: str,
        *,
        token: str | None = None,
        catalog: EventCatalog | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        retries: int = 5,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        max_retry_time: float = 60.0,
        max_batch_events: int = 500,
        max_batch_bytes: int = 512 * 1024,
        linger: float = 0.0,
        max_queued_bytes: int = 64 * 1024 * 1024,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= max_batch_events <= 1000:  # the hub's default max_publish_batch
            raise ValueError("max_batch_events must be 1..1000")
        self.url = f"{url.rstrip('/')}/v1/projects/{project}/events"
        self.project = project
        self.catalog = catalog or EventCatalog()
        self._headers = {"content-type": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout)
        )
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_time = max_retry_time
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self.linger = linger
        self.max_queued_bytes = max_queued_bytes
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.attempts = 0  # HTTP requests made, retries included
        self.batches = 0  # batches sent (one or more requests each)
        self._queue: collections.deque[_Queued] = collections.deque()
        self._queued_bytes = 0
        self._full = asyncio.Event()
        self._flushing = 0  # flush() calls waiting: no linger while any does
        self._sender: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> HubPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def encode(
        self, type: str, data: Any, *, key: str | None = None, id: str | None = None
    ) -> bytes:
        """One event as the JSON the hub takes, its id fixed now (checked by the catalog)."""
        encoded = self.catalog.encode_data(type, data)
        body: dict[str, Any] = {
            "type": type,
            "id": id or new_event_id(),
            "data": msgspec.Raw(encoded),
        }
        if key is not None:
            body["key"] = key
        return _encoder.encode(body)

    async def publish(
        self, type: str, data: Any, *, key: str | None = None, id: str | None = None
    ) -> int:
        """Publish one event; return its seq. `data` is encoded before the first await."""
        return await self.enqueue(self.encode(type, data, key=key, id=id))

    async def publish_many(self, events: Iterable[Mapping[str, Any]]) -> list[int]:
        """Publish `{"type", "data", "key"?, "id"?}` mappings, in order; their seqs."""
        bodies = [
            self.encode(e["type"], e.get("data"), key=e.get("key"), id=e.get("id")) for e in events
        ]
        if self._queued_bytes + sum(len(b) + 1 for b in bodies) > self.max_queued_bytes:
            self._check_room(sum(len(b) + 1 for b in bodies))  # all or none are queued
        return list(await asyncio.gather(*(self.enqueue(body) for body in bodies)))

    def enqueue(self, body: bytes) -> asyncio.Future[int]:
        """Queue an encoded event (see `encode`); the future resolves to its seq."""
        if self._closed:
            raise RuntimeError("publisher is closed")
        self._check_room(len(body) + 1)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(body, future))
        self._queued_bytes += len(body) + 1
        if len(self._queue) >= self.max_batch_events or self._queued_bytes >= self.max_batch_bytes:
            self._full.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_queued())
        return future

    def _check_room(self, size: int) -> None:
        # One event larger than the bound alone is let through (the hub's own limit judges it).
        if self._queue and self._queued_bytes + size > self.max_queued_bytes:
            raise PublisherFull(
                f"{len(self._queue)} events ({self._queued_bytes} bytes) wait to be sent, at "
                f"most max_queued_bytes={self.max_queued_bytes}: the hub is slower than the "
                "caller; slow down, or retry once earlier publishes have returned"
            )

    async def flush(self) -> None:
        """Publish every queued event now (no linger) and wait until each is published (or
        failed)."""
        self._flushing += 1
        self._full.set()  # a sender waiting out its linger goes at once
        try:
            while self._sender is not None and not self._sender.done():
                await asyncio.shield(self._sender)
        finally:
            self._flushing -= 1

    async def aclose(self) -> None:
        """Publish what is queued, then close the HTTP client (if this publisher made it)."""
        await self.flush()
        self._closed = True
        if self._owns_client:
            await self._client.aclose()

    async def _send_queued(self) -> None:
        while self._queue:
            if self.linger > 0 and not self._full.is_set() and not self._flushing:
                try:
                    await asyncio.wait_for(self._full.wait(), self.linger)
                except TimeoutError:
                    pass
            await self._send_batch(self._take_batch())

    async def _send_batch(self, batch: list[_Queued]) -> None:
        # One event goes as an object, several as an array: the hub takes both.
        payload = (
            batch[0].body if len(batch) == 1 else b"[" + b",".join(q.body for q in batch) + b"]"
        )
        try:
            seqs = await self._post(payload)
        except (EventValidationError, PublishRejected) as exc:
            if len(batch) > 1 and _one_event_may_be_at_fault(exc):
                # The hub refuses a whole batch for one bad event (and publishes none of it):
                # send each alone, so only the bad one fails.
                for queued in batch:
                    await self._send_batch([queued])
                return
            _fail(batch, exc)
            return
        except Exception as exc:  # every caller of the batch gets the error
            _fail(batch, exc)
            return
        if len(seqs) != len(batch):
            _fail(batch, PublishFailed(f"hub answered {len(seqs)} seqs for {len(batch)} events"))
            return
        for queued, seq in zip(batch, seqs, strict=True):
            if not queued.future.done():
                queued.future.set_result(seq)

    def _take_batch(self) -> list[_Queued]:
        batch: list[_Queued] = []
        size = 2
        while self._queue and len(batch) < self.max_batch_events:
            nxt = len(self._queue[0].body) + 1
            if batch and size + nxt > self.max_batch_bytes:
                break
            queued = self._queue.popleft()
            batch.append(queued)
            size += nxt
            self._queued_bytes -= nxt
        full = len(self._queue) >= self.max_batch_events
        if not full and self._queued_bytes < self.max_batch_bytes:
            self._full.clear()
        return batch

    async def _post(self, payload: bytes) -> list[int]:
        """POST one body, retrying what may pass later; the seqs the hub answered."""
        self.batches += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_retry_time
        last_error = "no attempt made"
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                response = await self._exchange(payload)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                retry_after: float | None = None
            except TimeoutError:  # the same id is resent: a retry cannot publish twice
                last_error = f"no whole answer within {self.timeout:g}s"
                retry_after = None
            else:
                if response.status_code < 300:
                    return self._seqs(response)
                message = error_message(response)
                if response.status_code == 422:
                    # The same exception as in-process publishing: one `except` covers both.
                    raise EventValidationError(message)
                if response.status_code not in RETRY_STATUSES:
                    raise PublishRejected(response.status_code, message)
                last_error = f"{response.status_code}: {message}"
                retry_after = _retry_after(response)
            if attempt == self.retries:
                break
            delay = self._delay(attempt + 1, retry_after)
            if loop.time() + delay > deadline:
                last_error += f" (retries stop after {self.max_retry_time:g}s)"
                break
            logger.warning(
                "publish to %s failed (attempt %d): %s; retrying in %.2fs",
                self.url,
                attempt + 1,
                last_error,
                delay,
            )
            await self._sleep(delay)
        raise PublishFailed(
            f"publish to {self.url} failed after {attempt + 1} attempts: {last_error}"
        )

    def _seqs(self, response: httpx.Response) -> list[int]:
        try:
            seqs: list[int] = msgspec.json.decode(response.content, type=_Seqs).seqs
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise PublishFailed(
                f"{self.url} answered {response.status_code} without the seqs ({exc}): "
                f"{response.text[:200]!r}"
            ) from None
        return seqs

    async def _exchange(self, payload: bytes) -> httpx.Response:
        """One POST and its whole answer, within `timeout` and MAX_ANSWER_BYTES."""
        async with (
            asyncio.timeout(self.timeout),
            self._client.stream("POST", self.url, content=payload, headers=self._headers) as answer,
        ):
            body = bytearray()
            async for chunk in answer.aiter_bytes():  # decoded: a gzip bomb counts in full
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise PublishFailed(
                        f"{self.url} answered {answer.status_code} with over "
                        f"{MAX_ANSWER_BYTES} bytes: not a hub's answer"
                    )
        kept = {k: v for k, v in answer.headers.items() if k in ("retry-after", "content-type")}
        return httpx.Response(answer.status_code, headers=kept, content=bytes(body))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after  # what the hub asked for (max_retry_time still bounds it)
        # Full jitter: spreads many publishers retrying after the same outage.
        return self._rng.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


def _fail(batch: list[_Queued], error: BaseException) -> None:
    for queued in batch:
        if not queued.future.done():
            queued.future.set_exception(error)


def _one_event_may_be_at_fault(exc: Exception) -> bool:
    """422 (an invalid event) or 413 (too large, perhaps for its batch only)."""
    return isinstance(exc, EventValidationError) or (
        isinstance(exc, PublishRejected) and exc.status == 413
    )


class _Seqs(msgspec.Struct):
    seqs: list[int]


class _ErrorDetail(msgspec.Struct):
    message: str = ""


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail | None = None
    detail: str | None = None


def error_message(response: httpx.Response) -> str:
    """The hub's `{"error": {"message"}}`; another server's body, shortened."""
    try:
        body = msgspec.json.decode(response.content, type=_ErrorBody)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return response.text[:500]
    if body.error is not None and body.error.message:
        return body.error.message
    if body.detail:
        return body.detail
    return response.text[:500]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


class SyncHubPublisher:
    """`HubPublisher` for code without an event loop: its own loop runs in a daemon thread.

    Safe to call from several threads at once; events from all of them share batches.
    `publish` blocks until the seq is known; `submit` returns a `concurrent.futures.Future`.
    """

    def __init__(self, url: str, project: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="hub-publisher", daemon=True
        )
        self._thread.start()
        self._publisher = self._call(_make_publisher(url, project, options))
        self._closed = False

    @property
    def publisher(self) -> HubPublisher:
        return self._publisher

    def __enter__(self) -> SyncHubPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(
        self,
        type: str,
        data: Any,
        *,
        key: str | None = None,
        id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        return self.submit(type, data, key=key, id=id).result(timeout)

    def submit(
        self, type: str, data: Any, *, key: str | None = None, id: str | None = None
    ) -> concurrent.futures.Future[int]:
        """Queue one event (encoded now, in the caller's thread); the future holds its seq."""
        body = self._publisher.encode(type, data, key=key, id=id)
        return asyncio.run_coroutine_threadsafe(_await(self._publisher, body), self._loop)

    def publish_many(self, events: Iterable[Mapping[str, Any]]) -> list[int]:
        return self._call(self._publisher.publish_many(list(events)))

    def flush(self) -> None:
        self._call(self._publisher.flush())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._publisher.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def _call(self, coroutine: Awaitable[T]) -> T:
        async def run() -> T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()


async def _make_publisher(url: str, project: str, options: dict[str, Any]) -> HubPublisher:
    return HubPublisher(url, project, **options)  # built in its loop: its Events belong there


async def _await(publisher: HubPublisher, body: bytes) -> int:
    return await publisher.enqueue(body)
