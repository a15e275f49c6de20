"""Test support: real hub servers on loopback port 0 and condition waits (no fixed sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Self
from urllib.parse import urlencode

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import BaseRoute
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hub.app import LifespanHook, create_app
from hub.backends.base import Backend
from hub.config import Settings
from hub.core import Hub
from hub.transports.server import HubServer, uvicorn_config
from hub.wire.catalog import EventCatalog


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Wait until `condition()` is true, checking every few ms; fail after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.005)


class RunningHub:
    def __init__(self, server: HubServer, host: str) -> None:
        self.server = server
        self.host = host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def hub(self) -> Hub:
        return self.server.hub

    @property
    def app(self) -> Starlette:
        """The hub's Starlette app (its `state` holds the limits and the read limiter)."""
        app: Any = self.server.config.loaded_app
        while not isinstance(app, Starlette):  # unwrap uvicorn's middleware
            app = app.app
        return app

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ws_url(self, project: str, **query: Any) -> str:
        params = {k: v for k, v in query.items() if v is not None}
        suffix = f"?{urlencode(params)}" if params else ""
        return f"ws://{self.host}:{self.port}/v1/projects/{project}/ws{suffix}"

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10.0)


@contextlib.asynccontextmanager
async def run_hub(
    settings: Settings | None = None,
    *,
    backend: Backend | None = None,
    catalog: EventCatalog | None = None,
    routes: Sequence[BaseRoute] = (),
    lifespan_hooks: Sequence[LifespanHook] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    **uvicorn_options: Any,
) -> AsyncIterator[RunningHub]:
    """Start a real hub server on a free loopback port; stop it (with drain) on exit."""
    settings = settings or Settings()
    # Tests of the hub core publish any payload under any type: an empty catalog unless the
    # test passes one (create_app alone would load every installed catalog, the services' too).
    if catalog is None:
        catalog = EventCatalog(strict=settings.strict_types)
    app = create_app(
        settings, backend=backend, catalog=catalog, routes=routes, lifespan_hooks=lifespan_hooks
    )
    options = {"log_level": "warning", **uvicorn_options}
    server = HubServer(
        uvicorn_config(app, host, port, settings, **options), install_signal_handlers=False
    )
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or task.done(), what="server start")
        if task.done():
            task.result()
            raise RuntimeError("server exited during startup")
        yield RunningHub(server, host)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


class FrameRecorder:
    """A raw WebSocket subscriber recording every frame (arrays flattened) and how it closed."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.seqs: list[int] = []  # of the events, kept as they come (tests poll it)
        self.closed: ConnectionClosed | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                decoded = msgspec.json.decode(await self.ws.recv())
                frames = decoded if isinstance(decoded, list) else [decoded]
                self.frames.extend(frames)
                self.seqs.extend(f["seq"] for f in frames if f["op"] == "event")
        except ConnectionClosed as exc:
            self.closed = exc

    @classmethod
    async def open(cls, url: str) -> Self:
        return cls(await connect(url, max_size=None))

    def ops(self, op: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["op"] == op]

    @property
    def welcome(self) -> dict[str, Any] | None:
        return next((f for f in self.frames if f["op"] == "welcome"), None)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.ops("event")

    @property
    def close_code(self) -> int | None:
        rcvd = self.closed.rcvd if self.closed is not None else None
        return rcvd.code if rcvd is not None else None

    async def wait_closed(self, timeout: float = 5) -> ConnectionClosed:
        await wait_for(lambda: self.closed is not None, timeout=timeout, what="connection closed")
        assert self.closed is not None
        return self.closed

    async def wait_frames(self, n: int) -> None:
        await wait_for(lambda: len(self.frames) >= n, timeout=5, what=f"{n} frames")

    async def close(self) -> None:
        await self.ws.close()
        await self.task


class FakeClock:
    """A clock the test moves by hand: call it for the time, `advance` (or set `now`) to move."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def require(missing: str | None) -> None:
    """Skip a test whose tool is `missing` (the reason); under CI, which installs every tool
    (.ci/run), fail instead: a CI machine without one must not pass by skipping."""
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{missing}, and CI is set: CI must run these tests", pytrace=False)
    pytest.skip(missing, allow_module_level=True)


class PingProbe:
    """A bystander on its own socket: pings every `interval` s and records each round trip in
    `rtts` (frames other than its pong, such as events, are skipped), and in `loop_cpu` the CPU
    time this thread (the event loop, where in-process hubs run) spent meanwhile: the stall
    the hub's own work caused, which a machine busy with other processes does not inflate."""

    def __init__(self, ws: ClientConnection, interval: float = 0.05) -> None:
        self.ws = ws
        self.interval = interval
        self.rtts: list[float] = []
        self.loop_cpu: list[float] = []
        self.closed: ConnectionClosed | None = None
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    @property
    def max_rtt(self) -> float:
        return max(self.rtts, default=0.0)

    async def _run(self) -> None:
        try:
            for n in itertools.count(1):
                sent, cpu = time.perf_counter(), time.thread_time()
                await self.ws.send('{"op":"ping","id":%d}' % n)  # noqa: UP031
                while not _is_pong(await asyncio.wait_for(self.ws.recv(), 10), n):
                    pass
                self.rtts.append(time.perf_counter() - sent)
                self.loop_cpu.append(time.thread_time() - cpu)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)  # the probe's pace
                if self._stop.is_set():
                    return
        except ConnectionClosed as exc:
            self.closed = exc

    async def one_more(self) -> None:
        """Wait for a round trip that starts from now (so it overlaps the work just done)."""
        count = len(self.rtts)
        await wait_for(lambda: len(self.rtts) > count + 1, timeout=15, what="a bystander ping")

    async def stop(self) -> list[float]:
        self._stop.set()
        await asyncio.wait_for(self._task, 15)
        assert self.closed is None, f"bystander closed: {self.closed}"
        return self.rtts


def _is_pong(message: str | bytes, ping_id: int) -> bool:
    decoded = msgspec.json.decode(message)
    frames = decoded if isinstance(decoded, list) else [decoded]
    return any(f.get("op") == "pong" and f.get("id") == ping_id for f in frames)


async def demo_banner(process: asyncio.subprocess.Process, timeout: float = 20) -> tuple[str, str]:
    """Read a starting `hub demo`'s banner from its stdout; return (banner, base URL)."""
    assert process.stdout is not None
    banner = ""
    async with asyncio.timeout(timeout):
        while "dashboard:" not in banner:
            line = await process.stdout.readline()
            assert line, f"demo exited early: {banner}"
            banner += line.decode()
    found = re.search(r"running on (http://127\.0\.0\.1:\d+)", banner)
    assert found is not None, banner
    return banner, found.group(1)


@contextlib.contextmanager
def hub_in_thread(
    settings: Settings, seed: Callable[[Hub], Awaitable[None]], *, timeout: float = 30.0
) -> Iterator[str]:
    """A real hub on its own event loop in a thread, seeded by `seed(hub)`, for sync tests
    (hypothesis drives plain sync clients); yields its base URL and stops it on exit."""
    started = threading.Event()
    stop: list[asyncio.Event] = []
    running: list[RunningHub] = []

    async def serve() -> None:
        async with run_hub(settings) as hub:
            await seed(hub.hub)
            stop.append(asyncio.Event())
            running.append(hub)
            started.set()
            await stop[0].wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(timeout), "hub did not start"
    try:
        yield running[0].url
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(timeout)
        assert not thread.is_alive(), "hub did not stop"
        loop.close()
