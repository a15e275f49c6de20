"""Emitters: how service code hands a typed event to the hub.

`InProcessEmitter` calls `Hub.publish` in the hub's own process. `HttpEmitter` posts to a
remote hub through `hub.publisher.HubPublisher`, which retries transient failures (connection
errors, 408, 429, 5xx) with exponential backoff, always resending the same idempotency id so a
retry after a lost response never publishes twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from hub.publisher import HubPublisher, PublishFailed, PublishRejected, new_event_id

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


class HttpEmitter:
    """Publishes to a remote hub over `POST /v1/projects/{project}/events`, through
    `hub.publisher.HubPublisher`: an event goes out as soon as it is emitted, together with
    those emitted while the previous request was in flight."""

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
        self.project = project
        self.publisher = HubPublisher(
            base_url,
            project,
            token=token,
            client=client,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            timeout=timeout,
            sleep=sleep,
            rng=rng,  # events emitted concurrently share a request (batching)
        )
        self.url = self.publisher.url

    @property
    def retries(self) -> int:
        return self.publisher.retries

    @retries.setter
    def retries(self, value: int) -> None:
        self.publisher.retries = value

    @property
    def attempts(self) -> int:
        """Total HTTP attempts made, for tests and metrics."""
        return self.publisher.attempts

    @property
    def _client(self) -> httpx.AsyncClient:
        return self.publisher._client

    async def __aenter__(self) -> HttpEmitter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.publisher.aclose()

    async def emit(
        self,
        type: str,
        data: Any,  # a msgspec Struct or a dict
        *,
        key: str | None = None,
        id: str | None = None,
    ) -> int:
        # Encoded (and its id fixed) before the first await: every retry carries the same id.
        return await self.publisher.publish(type, data, key=key, id=id)
