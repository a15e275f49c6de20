"""Every CLI failure a person can cause: one line on stderr saying what to do, a distinct exit
status (hub.cli_exit.ExitStatus, listed by `hub --help`), no traceback.

Each test runs the real `hub` command (`python -m hub`) as a subprocess, against a real hub
on a loopback port where one is needed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from websockets.asyncio.client import connect

from hub.auth import mint_token
from hub.cli_exit import ExitStatus
from hub.config import Settings
from tests.support import RunningHub, run_hub

SECRET = "cli-failures-test-secret-of-32-bytes-or-more"
TIMEOUT = 30.0


class Result:
    def __init__(self, status: int, stdout: str, stderr: str) -> None:
        self.status = status
        self.stdout = stdout
        self.stderr = stderr

    @property
    def last_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""

    def assert_failure(self, status: int, *words: str) -> None:
        """The status, a last stderr line holding `words`, and no traceback anywhere."""
        detail = f"status {self.status}, stderr:\n{self.stderr}"
        assert self.status == status, detail
        assert "Traceback" not in self.stderr, detail
        assert "Exception" not in self.stderr, detail
        for word in words:
            assert word in self.last_line, detail

    def assert_one_line(self) -> None:
        """Nothing but the connection state before the one line that says what to do."""
        lines = self.stderr.strip().splitlines()
        assert all(line.startswith("hub tail: connecting") for line in lines[:-1]), self.stderr


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HUB_SECRET", "HUB_TOKEN")}
    env.pop("HUB_DEBUG", None)
    env.update(extra)
    return env


async def hub_command(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run `hub ARGS` to its end (bounded), return what it said."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or _env(),
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port with a socket bound and listening on it for the test's duration."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
async def secured_hub() -> AsyncIterator[RunningHub]:
    async with run_hub(Settings(heartbeat_s=5.0, secret=SECRET)) as running:
        yield running


def token(projects: Sequence[str] = ("p1",), *, now: float | None = None) -> str:
    return mint_token(SECRET, subject="cli-test", projects=list(projects), ttl_s=60, now=now)


# --- binding --------------------------------------------------------------------------------


async def test_serve_on_a_port_in_use(held_port: int) -> None:
    result = await hub_command("serve", "--port", str(held_port))
    result.assert_failure(ExitStatus.CANNOT_BIND, "already in use", "--port")
    assert result.stdout == ""  # never claimed to listen


async def test_demo_on_a_port_in_use_starts_no_work(held_port: int) -> None:
    result = await hub_command("demo", "--port", str(held_port), "--log-level", "info")
    result.assert_failure(ExitStatus.CANNOT_BIND, "already in use", "--port")
    assert result.stdout == ""  # no banner
    # At info level the demo logs every ingest and workflow it starts: nothing else was said.
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- hub tail -----------------------------------------------------------------------------


async def test_tail_without_a_token(secured_hub: RunningHub) -> None:
    result = await hub_command("tail", "--url", secured_hub.url, "--project", "p1")
    result.assert_failure(ExitStatus.UNAUTHORIZED, "--token", "HUB_TOKEN")
    result.assert_one_line()


async def test_tail_with_an_expired_token(secured_hub: RunningHub) -> None:
    expired = token(now=time.time() - 3600)
    result = await hub_command(
        "tail", "--url", secured_hub.url, "--project", "p1", "--token", expired
    )
    result.assert_failure(ExitStatus.UNAUTHORIZED, "expired", "--token")
    result.assert_one_line()


async def test_tail_of_a_project_the_token_does_not_allow(secured_hub: RunningHub) -> None:
    env = _env(HUB_TOKEN=token(["p1"]))  # the token from the environment is used too
    result = await hub_command("tail", "--url", secured_hub.url, "--project", "other", env=env)
    result.assert_failure(ExitStatus.FORBIDDEN, "'other'")
    result.assert_one_line()


async def test_tail_of_an_invalid_project() -> None:
    result = await hub_command("tail", "--url", "http://127.0.0.1:1", "--project", "no such!")
    result.assert_failure(ExitStatus.USAGE, "--project", "letters, digits")


async def test_tail_with_bad_types(running_hub: RunningHub) -> None:
    result = await hub_command(
        "tail", "--url", running_hub.url, "--project", "p1", "--types", "Agent Runs!"
    )
    result.assert_failure(ExitStatus.REFUSED, "--types")
    result.assert_one_line()


async def test_tail_where_nothing_listens_shows_its_state_and_gives_up() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await hub_command("tail", "--url", url, "--project", "p1", "--give-up-after", "1")
    result.assert_failure(ExitStatus.UNREACHABLE, "gave up", "hub serve")
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "hub tail: connecting"
    assert any("connection refused" in line and "retrying in" in line for line in lines)


async def test_tail_piped_into_head_exits_quietly(running_hub: RunningHub) -> None:
    # More lines than a pipe holds: tail is still writing when `head` goes away.
    for start in range(0, 3000, 1000):
        async with running_hub.http() as http:
            response = await http.post(
                "/v1/projects/p1/events",
                json=[{"type": "t.x", "data": {"n": start + i}} for i in range(1000)],
            )
            assert response.status_code == 202
    script = (
        '"$0" -m hub tail --url "$1" --project p1 --since 0 -q | head -n 2; exit ${PIPESTATUS[0]}'
    )
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        sys.executable,
        running_hub.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    async with asyncio.timeout(TIMEOUT):
        stdout, stderr = await process.communicate()
    assert len(stdout.decode().splitlines()) == 2
    result = Result(process.returncode or 0, "", stderr.decode())
    result.assert_failure(ExitStatus.BROKEN_PIPE)
    assert result.stderr == ""  # quietly: not even "Exception ignored ... BrokenPipeError"


async def test_tail_interrupted_with_ctrl_c_exits_130_quietly(running_hub: RunningHub) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub",
        "tail",
        "--url",
        running_hub.url,
        "--project",
        "p1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    assert process.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            said = b""
            while b"live" not in said:
                line = await process.stderr.readline()
                assert line, said
                said += line
            process.send_signal(signal.SIGINT)
            _, rest = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    result = Result(process.returncode or 0, "", (said + rest).decode())
    result.assert_failure(ExitStatus.INTERRUPTED)
    assert "KeyboardInterrupt" not in result.stderr
    assert result.last_line == "hub tail: live"  # nothing after it


# --- hub token ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--project", "p1"], ["no secret", "--secret", "HUB_SECRET"]),
        (["--secret", SECRET], ["--project"]),
        (["--secret", SECRET, "--project", "p1", "--scope", "admin"], ["'admin'", "publish"]),
        (["--secret", SECRET, "--project", "p1", "--ttl", "-5"], ["--ttl"]),
        (["--secret", "short", "--project", "p1"], ["32"]),
        (["--secret", SECRET, "--project", "p1", "--ttl", "soon"], ["--ttl", "hub token --help"]),
    ],
    ids=["no-secret", "no-project", "bad-scope", "negative-ttl", "short-secret", "ttl-not-number"],
)
async def test_token_with_bad_arguments(args: list[str], words: list[str]) -> None:
    result = await hub_command("token", *args)
    result.assert_failure(ExitStatus.USAGE, *words)
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


# --- hub publish --------------------------------------------------------------------------


async def test_publish_where_nothing_listens_gives_up() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await hub_command(
        "publish", "--url", url, "--project", "p1", "note.added", "{}", "--retry-for", "0.5"
    )
    result.assert_failure(ExitStatus.UNREACHABLE, "hub running", "--retry-for")


async def test_publish_without_a_token(secured_hub: RunningHub) -> None:
    result = await hub_command("publish", "--url", secured_hub.url, "--project", "p1", "a.b")
    result.assert_failure(ExitStatus.UNAUTHORIZED, "publish scope", "--token")


async def test_publish_of_an_invalid_event(running_hub: RunningHub) -> None:
    result = await hub_command(
        "publish", "--url", running_hub.url, "--project", "p1", "a.b", '{"n": 9007199254740993}'
    )
    result.assert_failure(ExitStatus.REFUSED, "invalid event", "$.data.n")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], ["TYPE", "--file"]),
        (["a.b", "{not json"], ["not JSON"]),
        (["--file", "/nonexistent/events.jsonl"], ["cannot read", "/nonexistent"]),
    ],
    ids=["nothing-to-publish", "data-not-json", "missing-file"],
)
async def test_publish_with_bad_arguments(args: list[str], words: list[str]) -> None:
    result = await hub_command("publish", "--url", "http://127.0.0.1:1", *args)
    result.assert_failure(ExitStatus.USAGE, *words)


# --- log level ----------------------------------------------------------------------------


async def _serve_and_connect(log_level: str) -> str:
    """Run `hub serve --log-level LEVEL`, open and close one WebSocket, stop it; its stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub",
        "serve",
        "--port",
        "0",
        "--log-level",
        log_level,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = (await process.stdout.readline()).decode()
            assert line.startswith("hub listening on http://"), line
            base = line.split()[-1].replace("http://", "ws://")
            async with connect(f"{base}/v1/projects/p1/ws?types=x.*") as ws:
                await ws.recv()  # welcome
            process.send_signal(signal.SIGTERM)
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    return stderr.decode()


async def test_log_level_warning_silences_uvicorn_per_connection_lines() -> None:
    quiet = await _serve_and_connect("warning")
    assert "INFO" not in quiet, quiet
    assert "types=x" not in quiet, quiet
    chatty = await _serve_and_connect("info")  # the same run at info does print them
    assert "[accepted]" in chatty and "connection open" in chatty, chatty


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--log-level", "loud"], ["--log-level", "hub serve --help"]),
        (["--port", "99999"], ["--port", "0..65535"]),
        (["--backend", "foo://x"], ["memory://", "redis://"]),
        (["--retention", "-5"], ["retention_events"]),
    ],
    ids=["log-level", "port", "backend", "retention"],
)
async def test_serve_with_bad_arguments(args: list[str], words: list[str]) -> None:
    result = await hub_command("serve", "--port", "0", *args)
    result.assert_failure(ExitStatus.USAGE, *words)
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
