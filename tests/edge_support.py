"""Helpers for the edge tests: raw request heads, log capture, a control subscriber, and a
`hub serve` subprocess (for what only a process shows: signals, rlimits, stderr)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

from websockets.asyncio.client import connect

from .support import FrameRecorder, RunningHub, wait_for

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"hub listening on http://127\.0\.0\.1:(\d+)")
WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE_HEADERS = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + WS_KEY + b"\r\nSec-WebSocket-Version: 13\r\n"
)


def upgrade_head(
    target: bytes = b"/v1/projects/p/ws", extra: bytes = b"", host: bytes = b"localhost"
) -> bytes:
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: "
        + host
        + b"\r\n"
        + UPGRADE_HEADERS
        + extra
        + b"\r\n"
    )


async def exchange(port: int, data: bytes, timeout: float) -> tuple[bytes, float]:
    """Send `data` in one write; return what the hub sent until it closed, and how long the
    hub took to close. Fails if the socket is still open after `timeout` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        received = bytearray()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionError:
                    break
                if not chunk:
                    break
                received += chunk
        return bytes(received), time.monotonic() - started
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def status_of(response: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    return int(match.group(1)) if match else None


class LogLines(logging.Handler):
    """Every record the process logs (root, uvicorn's and asyncio's loggers), formatted with
    its traceback, as one string each."""

    NAMES: Sequence[str] = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "asyncio")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def tracebacks(self) -> list[str]:
        return [line for line in self.lines if "Traceback" in line or line.startswith("ERROR")]


@contextlib.contextmanager
def capture_logs(level: int = logging.INFO) -> Iterator[LogLines]:
    handler = LogLines()
    loggers = [logging.getLogger(n) for n in LogLines.NAMES]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
    logging.getLogger().setLevel(level)
    try:
        yield handler
    finally:
        for lg, old in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(old)


class Control:
    """A subscriber on its own project that must receive every event, in order, while the
    test attacks the hub."""

    def __init__(self, running: RunningHub, recorder: FrameRecorder, project: str) -> None:
        self.running = running
        self.recorder = recorder
        self.project = project
        self.published: list[int] = []

    async def publish(self, n: int = 1) -> None:
        for _ in range(n):
            seq = await self.running.hub.publish(self.project, "control.tick.sent", {"i": 1})
            self.published.append(seq)

    async def check(self) -> None:
        """Every event published so far arrived, in order, and the socket is still open."""
        await wait_for(
            lambda: len(self.recorder.seqs) >= len(self.published), what="control events"
        )
        assert self.recorder.seqs == self.published
        assert self.recorder.closed is None


@contextlib.asynccontextmanager
async def control_subscriber(
    running: RunningHub, project: str = "control", token: str | None = None
) -> AsyncIterator[Control]:
    ws = await connect(running.ws_url(project, token=token))
    recorder = FrameRecorder(ws)
    try:
        await recorder.wait_frames(1)  # the welcome
        control = Control(running, recorder, project)
        await control.publish()
        yield control
        await control.publish()
        await control.check()
    finally:
        await recorder.close()


class HubProcess:
    """A `hub serve --port 0` subprocess whose stderr goes to a file the test reads."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, stderr: Path) -> None:
        self.process = process
        self.port = port
        self.stderr_path = stderr

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def hub_process(
    *args: str, env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None
) -> AsyncIterator[HubProcess]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    environ["PYTHONUNBUFFERED"] = "1"
    environ.update(env or {})
    with tempfile.TemporaryDirectory() as tmp:
        stderr_path = Path(tmp) / "stderr"
        with stderr_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hub", "serve", "--port", "0", *args,
                cwd=REPO, env=environ, stdout=asyncio.subprocess.PIPE, stderr=stderr,
                preexec_fn=preexec,
            )  # fmt: skip
        try:
            assert process.stdout is not None
            port = None
            async with asyncio.timeout(20):
                while port is None:
                    line = (await process.stdout.readline()).decode()
                    assert line, f"hub serve exited: {stderr_path.read_text()[-2000:]}"
                    match = LISTENING.search(line)
                    if match:
                        port = int(match.group(1))
            yield HubProcess(process, port, stderr_path)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
