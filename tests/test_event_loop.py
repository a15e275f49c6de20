"""`hub serve --loop {auto,uvloop,asyncio}` (issue 16): the running server says which loop it
runs, and delivers on each; a subscriber's session works the same on both."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import uvloop
from websockets.asyncio.client import connect

from hub.event_loop import loop_factory, loop_name

from .edge_support import hub_process
from .redis_support import REPO
from .support import demo_banner, wait_for
from .test_edge_process import event_seqs, publish

LOOP_LINE = re.compile(r"event loop: (\w+)")


def loop_of(stderr: str) -> str:
    match = LOOP_LINE.search(stderr)
    assert match, f"no 'event loop:' line in the log:\n{stderr[-2000:]}"
    return match.group(1)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("--loop", "asyncio"), {}, "asyncio"),
        (("--loop", "uvloop"), {}, "uvloop"),
        ((), {}, "uvloop"),  # auto, and uvloop is a dependency wherever it installs
        ((), {"HUB_LOOP": "asyncio"}, "asyncio"),
    ],
)
async def test_serve_runs_the_loop_asked_for_and_delivers_on_it(
    args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    async with hub_process("--log-level", "info", *args, env=env) as hub:
        assert loop_of(hub.stderr) == expected
        url = f"ws://127.0.0.1:{hub.port}/v1/projects/control/ws?types=control.*"
        async with connect(url) as ws:
            welcome = msgspec.json.decode(await asyncio.wait_for(ws.recv(), 10))
            assert welcome["op"] == "welcome"
            # A client op on the detached session, answered on this loop too.
            await ws.send(msgspec.json.encode({"op": "ping", "id": 7}).decode())
            async with asyncio.timeout(10):
                reply = msgspec.json.decode(await ws.recv())
            assert reply == {"op": "pong", "id": 7}
            await publish(hub.port, 5)
            assert await event_seqs(ws, 5) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(("command", "loop"), [("hub", "asyncio"), ("services.demo", "uvloop")])
async def test_demo_runs_the_loop_asked_for(command: str, loop: str, tmp_path: Path) -> None:
    """`hub demo` and `python -m services.demo` share serve's `--loop`."""
    argv = ["-m", command, *(["demo"] if command == "hub" else [])]
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *argv, "--port", "0", "--loop", loop, "--interval", "3600",
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    try:
        await demo_banner(process)
        await wait_for(lambda: LOOP_LINE.search(stderr_path.read_text()) is not None)
        assert loop_of(stderr_path.read_text()) == loop
    finally:
        process.terminate()
        async with asyncio.timeout(20):
            await process.wait()


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["-m", "hub", "serve", "--loop", "tokio"], {}),
        (["-m", "hub", "serve"], {"HUB_LOOP": "tokio"}),
        (["-m", "services.demo"], {"HUB_LOOP": "tokio"}),
    ],
)
def test_an_unknown_loop_is_a_usage_error(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, *argv, "--port", "0"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "tokio" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr


def test_loop_factory_choices() -> None:
    assert loop_factory("asyncio") is None
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("auto") is uvloop.new_event_loop
    with pytest.raises(ValueError, match="unknown event loop"):
        loop_factory("tokio")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(_name()) == "uvloop"
    with asyncio.Runner() as runner:
        assert runner.run(_name()) == "asyncio"


async def _name() -> str:
    return loop_name()
