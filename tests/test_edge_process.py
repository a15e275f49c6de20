"""What only a `hub serve` process shows: out of file descriptors it backs off and logs once
per interval, recovers when connections go, and SIGTERM with half-open sockets exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect

from hub.transports.accept_errors import ACCEPT_FAILURE, AcceptErrorLog

from .edge_support import hub_process, upgrade_head
from .support import wait_for

OPEN_FILES = 96  # soft and hard: `hub serve` cannot raise it


def low_open_files_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


async def publish(port: int, n: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        for i in range(n):
            body = {"type": "control.tick.sent", "data": {"i": i}}
            response = await http.post("/v1/projects/control/events", json=body)
            assert response.status_code == 202, response.text


async def event_seqs(ws: ClientConnection, n: int) -> list[int]:
    seqs: list[int] = []
    async with asyncio.timeout(10):
        while len(seqs) < n:
            decoded = msgspec.json.decode(await ws.recv())
            for frame in decoded if isinstance(decoded, list) else [decoded]:
                if frame["op"] == "event":
                    seqs.append(frame["seq"])
    return seqs


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def healthz_answers(port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            response = await http.get(f"http://127.0.0.1:{port}/healthz")
            return response.status_code == 200
    except httpx.HTTPError:
        return False


async def test_out_of_file_descriptors_logs_once_per_interval_and_recovers() -> None:
    # asyncio's selector loop: what hub.transports.accept_errors tames (uvloop: next test).
    env = {"HUB_HANDSHAKE_TIMEOUT_S": "30", "HUB_ACCEPT_ERROR_LOG_INTERVAL_S": "60"}
    async with hub_process(
        "--log-level", "info", "--loop", "asyncio", env=env, preexec=low_open_files_limit
    ) as hub:
        async with connect(f"ws://127.0.0.1:{hub.port}/v1/projects/control/ws") as control:
            await publish(hub.port, 1)
            held: list[asyncio.StreamWriter] = []
            try:
                for _ in range(OPEN_FILES + 60):  # more than the hub has descriptors for
                    _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # never ends
                    held.append(writer)
                await wait_for(
                    lambda: "cannot accept connections" in hub.stderr, what="an accept failure"
                )
                # Out of descriptors for 1.5 s: asyncio retries each second; that must add
                # no line and cost next to no CPU (it spun on accept() before: ~40% of a core).
                cpu_before = cpu_seconds(hub.process.pid)
                await asyncio.sleep(1.5)  # a duration being measured, not a wait for a state
                cpu_spent = cpu_seconds(hub.process.pid) - cpu_before
                failures_logged = hub.stderr.count("cannot accept connections")
            finally:
                for writer in held:
                    writer.close()
            await wait_for(lambda: healthz_answers(hub.port), timeout=15, what="/healthz again")
            await publish(hub.port, 3)
            assert await event_seqs(control, 4) == [1, 2, 3, 4]
        log = hub.stderr
    assert failures_logged == 1, log[-3000:]
    assert cpu_spent < 0.3, f"{cpu_spent:.2f} s of CPU in 1.5 s out of descriptors"
    assert "Traceback" not in log and "out of system resource" not in log, log[-3000:]
    assert len(log.splitlines()) < 60, log[-3000:]


async def test_out_of_file_descriptors_under_uvloop_refuses_cheaply_and_recovers() -> None:
    """libuv answers EMFILE by accepting and closing the pending connections at once (with a
    descriptor it keeps in reserve): no log line, no spinning, the listener stays open."""
    env = {"HUB_HANDSHAKE_TIMEOUT_S": "30"}
    async with hub_process(
        "--log-level", "info", "--loop", "uvloop", env=env, preexec=low_open_files_limit
    ) as hub:
        assert "event loop: uvloop" in hub.stderr
        async with connect(f"ws://127.0.0.1:{hub.port}/v1/projects/control/ws") as control:
            await publish(hub.port, 1)
            held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            try:
                for _ in range(OPEN_FILES + 60):  # more than the hub has descriptors for
                    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # never ends
                    held.append((reader, writer))
                await wait_for(
                    lambda: any(reader.at_eof() for reader, _ in held), what="a refused socket"
                )
                cpu_before = cpu_seconds(hub.process.pid)
                await asyncio.sleep(1.5)  # a duration being measured, not a wait for a state
                cpu_spent = cpu_seconds(hub.process.pid) - cpu_before
            finally:
                for _, writer in held:
                    writer.close()
            await wait_for(lambda: healthz_answers(hub.port), timeout=15, what="/healthz again")
            await publish(hub.port, 3)
            assert await event_seqs(control, 4) == [1, 2, 3, 4]
        log = hub.stderr
    assert cpu_spent < 0.3, f"{cpu_spent:.2f} s of CPU in 1.5 s out of descriptors"
    assert "Traceback" not in log, log[-3000:]
    assert len(log.splitlines()) < 60, log[-3000:]


async def test_sigterm_with_half_open_and_refused_sockets_pending_exits_0() -> None:
    async with hub_process("--log-level", "info") as hub:
        url = f"ws://127.0.0.1:{hub.port}/v1/projects/control/ws"
        async with connect(url) as subscriber:
            await subscriber.recv()  # the welcome
            pending: list[asyncio.StreamWriter] = []
            for i in range(30):
                _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
                if i % 3 == 0:  # a head that never ends
                    writer.write(upgrade_head()[:-10])
                elif i % 3 == 1:  # refused by the WebSocket parser, answer never read
                    writer.write(upgrade_head(extra=b"Content-Length: 1\r\n") + b"x")
                else:  # an upgrade whose frames never come
                    writer.write(upgrade_head())
                pending.append(writer)
            await wait_for(lambda: healthz_answers(hub.port), what="hub serving")
            hub.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                code = await hub.process.wait()
            for writer in pending:
                writer.close()
            with contextlib.suppress(Exception):
                await subscriber.close()
        log = hub.stderr
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_accept_failures_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    passed_on: list[dict[str, Any]] = []
    handler = AcceptErrorLog(10.0, lambda loop, context: passed_on.append(context), lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        failure = {"message": ACCEPT_FAILURE, "exception": OSError(24, "Too many open files")}
        with caplog.at_level(logging.WARNING, logger="hub.server"):
            for _ in range(4096):
                handler(loop, failure)
            now[0] += 9.9
            handler(loop, failure)
            now[0] += 0.2
            handler(loop, failure)
            handler(loop, {"message": "something else"})
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "hub.server"]
    assert len(lines) == 2, lines
    assert (
        "(1 failed attempt(s)" in lines[0] and "(4097 failed attempt(s)" in lines[1]
    )  # counting this one
    assert handler.failures == 4098
    assert passed_on == [{"message": "something else"}]
