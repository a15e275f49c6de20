"""Emitters: how service code hands a typed event to the hub.

`InProcessEmitter` calls `Hub.publish` in the hub's own process. `HttpEmitter` posts to a
remote hub and retries transient failures (connection errors, 429, 5xx) with exponential
backoff, always resending the same idempotency id so a retry after a lost response never
publishes twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import msgspec

from hub.errors import EventValidationError

if TYPE_CHECKING:
    from hub.core import Hub

__all__ = [
    "Emitter",
    "HttpEmitter",
    "InProcessEmitter",
    "PublishFailed",
    "PublishRejected",
    "new_event_id",
]

log = logging.getLogger(__name__)


class Emitter(Protocol):
    async def emit(
        self,
        type: str,
        data: Any,  # a msgspec Struct or a dict
        *,
        key: str | None = None,
        id: str | None = None,
    ) -> int:
        """Publish one event and return the seq the hub assigned.

        `data` must be encoded before the first await: callers may change it afterwards.
        """


def new_event_id() -> str:
    return uuid.uuid4().hex


class PublishRejected(ValueError):
    """The hub refused the event (a 4xx other than 422 and 429): retrying cannot help.

    A 422 (invalid typed data) raises the hub's own `EventValidationError` instead, whose
    message names the bad field (e.g. `$.data.progress`), as in-process publishing does.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class PublishFailed(RuntimeError):
    """The hub stayed unreachable or unavailable through every retry."""


class InProcessEmitter:
    """Publishes through the `Hub` object living in this process (no network hop).

    Validation failures raise the hub's `EventValidationError` straight to the caller.
    """

    def __init__(self, hub: Hub, project: str) -> None:
        self.hub = hub
        self.project = project

    async def emit(
        self,
        type: str,
        data: Any,  # a msgspec Struct or a dict
        *,
        key: str | None = None,
        id: str | None = None,
    ) -> int:
        return await self.hub.publish(self.project, type, data, key=key, id=id or new_event_id())


_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_encoder = msgspec.json.Encoder()


class HttpEmitter:
    """Publishes to a remote hub over `POST /v1/projects/{project}/events`."""

    def __init__(
        self,
        base_url: str,
        project: str,
        *,
        token: str | None = None,
        client: httpx.AsyncClient | None = None,
        retries: int = 5,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        timeout: float = 10.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/v1/projects/{project}/events"
        self.project = project
        self._headers = {"content-type": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.attempts = 0  # total HTTP attempts made, for tests and metrics

    async def __aenter__(self) -> HttpEmitter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def emit(
        self,
        type: str,
        data: Any,  # a msgspec Struct or a dict
        *,
        key: str | None = None,
        id: str | None = None,
    ) -> int:
        # The id is fixed before the first attempt: every retry carries the same one.
        body: dict[str, Any] = {"type": type, "id": id or new_event_id(), "data": data}
        if key is not None:
            body["key"] = key
        return (await self._post(_encoder.encode(body)))[0]

    async def _post(self, payload: bytes) -> list[int]:
        last_error = "no attempt made"
        retry_after: float | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await self._sleep(self._delay(attempt, retry_after))
            retry_after = None
            self.attempts += 1
            try:
                response = await self._client.post(self.url, content=payload, headers=self._headers)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("publish to %s failed (attempt %d): %s", self.url, attempt + 1, exc)
                continue
            if response.status_code < 300:
                seqs: list[int] = response.json()["seqs"]
                return seqs
            message = _error_message(response)
            if response.status_code == 422:
                # The same exception as in-process publishing: one `except` covers both paths.
                raise EventValidationError(message)
            if response.status_code not in _RETRY_STATUSES:
                raise PublishRejected(response.status_code, message)
            last_error = f"{response.status_code}: {message}"
            retry_after = _retry_after(response)
            log.warning("publish to %s got %s (attempt %d)", self.url, last_error, attempt + 1)
        raise PublishFailed(
            f"publish to {self.url} failed after {self.retries + 1} attempts: {last_error}"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        # Full jitter: spreads many publishers retrying after the same outage.
        return self._rng.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


def _error_message(response: httpx.Response) -> str:
    # The hub answers `{"error": {"code": ..., "message": ...}}`; other servers, anything.
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return response.text[:500]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None
