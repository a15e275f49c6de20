"""SIGTERM on `hub serve`: every subscriber gets an error frame and close 1001, exit code 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect

from .support import FrameRecorder

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"hub listening on http://127\.0\.0\.1:(\d+)")


@pytest.fixture
async def hub_process() -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["PYTHONUNBUFFERED"] = "1"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub",
        "serve",
        "--port",
        "0",
        "--log-level",
        "warning",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        port = None
        async with asyncio.timeout(20):
            while port is None:
                line = await process.stdout.readline()
                assert line, "hub serve exited before printing where it listens"
                match = LISTENING.search(line)
                if match:
                    port = int(match.group(1))
        yield process, port
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def open_subscribers(port: int, projects: tuple[str, ...]) -> list[ClientConnection]:
    clients = []
    for project in projects:
        ws = await connect(f"ws://127.0.0.1:{port}/v1/projects/{project}/ws")
        welcome = msgspec.json.decode(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["op"] == "welcome"
        clients.append(ws)
    return clients


async def test_sigterm_sends_every_subscriber_an_error_frame_and_close_1001(
    hub_process: tuple[asyncio.subprocess.Process, int],
) -> None:
    process, port = hub_process
    recorders = [FrameRecorder(ws) for ws in await open_subscribers(port, ("p1", "p1", "p2"))]

    process.send_signal(signal.SIGTERM)
    for recorder in recorders:
        closed, frames = await recorder.wait_closed(), recorder.frames
        assert closed.rcvd is not None, "the hub must send a close frame, not just drop TCP"
        assert closed.rcvd.code == 1001
        assert frames, "an error frame says why before the close"
        error = frames[-1]
        assert error["op"] == "error"
        assert error["close"] == 1001
        assert error["code"] == "shutting_down"
        assert error["retryable"] is True
    await asyncio.wait_for(process.wait(), 5)  # and the process is gone within a few seconds


async def test_sigterm_with_subscribers_connected_exits_with_code_0(
    hub_process: tuple[asyncio.subprocess.Process, int],
) -> None:
    process, port = hub_process
    recorders = [FrameRecorder(ws) for ws in await open_subscribers(port, ("p1", "p2"))]

    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 5) == 0
    for recorder in recorders:
        closed = await recorder.wait_closed()
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1001


async def test_sigterm_with_no_subscribers_exits_with_code_0(
    hub_process: tuple[asyncio.subprocess.Process, int],
) -> None:
    process, _ = hub_process
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 5) == 0
