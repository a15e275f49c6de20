"""Server subprocesses for a run: the hub (`python -m hub serve`) or the baseline.

Both print `... listening on http://HOST:PORT` once they accept connections; we wait for that
line (bounded), keep draining their output into a log file, and stop them with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from .system import ProcSampler, find_listening_pid, loopback_address

__all__ = ["TARGETS", "ServerProcess", "one_hub", "start_server"]

TARGETS: Final = ("hub", "baseline")
_LISTENING: Final = re.compile(rb"listening on (http://\S+)")
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0


def server_command(
    target: str, host: str, extra: list[str], *, inprocess: bool = False
) -> list[str]:
    """The server's command line; `inprocess`: the hub with the in-process publisher's
    route (loadtest/inprocess.py; the baseline always has it)."""
    common = ["--host", host, "--port", "0", "--log-level", "warning"]
    if target == "hub" and inprocess:
        return [sys.executable, "-m", "loadtest.inprocess", *common, *extra]
    if target == "hub":
        return [sys.executable, "-m", "hub", "serve", *common, *extra]
    if target == "baseline":
        return [sys.executable, "-m", "loadtest.baseline", *common]
    raise ValueError(f"unknown target {target!r}")


@dataclass
class ServerProcess:
    target: str
    url: str
    host: str
    port: int
    pid: int | None
    command: list[str] = field(default_factory=list)
    log_path: Path | None = None
    exit_code: int | None = None
    _proc: asyncio.subprocess.Process | None = None
    _log: IO[bytes] | None = None
    _drain: asyncio.Task[None] | None = None

    @property
    def started_by_tool(self) -> bool:
        return self._proc is not None

    async def stop(self) -> None:
        """SIGTERM, wait for a clean exit (bounded), SIGKILL if it does not come."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self.exit_code = proc.returncode
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._drain, 5)
        if self._log is not None:
            self._log.close()
        self._proc = None

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "url": self.url,
            "pid": self.pid,
            "started_by_tool": self.started_by_tool,
            "command": self.command,
            "exit_code": self.exit_code,
            "log": str(self.log_path) if self.log_path else None,
        }


async def _copy(stream: asyncio.StreamReader, log: IO[bytes]) -> None:
    while line := await stream.readline():
        log.write(line)
        log.flush()


async def start_server(
    target: str,
    log_path: Path,
    extra: list[str] | None = None,
    host: str = "127.0.0.1",
    *,
    inprocess: bool = False,
) -> ServerProcess:
    """Start a server on loopback, port 0, and return once it prints its address."""
    loopback_address(f"http://{'[' + host + ']' if ':' in host else host}:1")  # guard
    command = server_command(target, host, extra or [], inprocess=inprocess)
    log = log_path.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdout is not None
    server = ServerProcess(target, "", host, 0, proc.pid, command, log_path, None, proc, log)
    try:
        url = await asyncio.wait_for(_wait_listening(proc.stdout, log), START_TIMEOUT_S)
    except (TimeoutError, EOFError):
        await server.stop()
        raise RuntimeError(f"{target} did not start; see {log_path}") from None
    server.url = url
    server.host, server.port = loopback_address(url)
    server._drain = asyncio.create_task(_copy(proc.stdout, log))
    return server


async def _wait_listening(stream: asyncio.StreamReader, log: IO[bytes]) -> str:
    while True:
        line = await stream.readline()
        if not line:
            raise EOFError
        log.write(line)
        match = _LISTENING.search(line)
        if match:
            return match.group(1).decode()


@contextlib.asynccontextmanager
async def one_hub(
    scenario: str,
    out_dir: Path,
    *,
    url: str | None = None,
    server_pid: int | None = None,
    server_args: list[str] | None = None,
) -> AsyncIterator[tuple[str, int, ProcSampler | None]]:
    """The hub a single-hub scenario runs against: started here (its log in `out_dir`) unless
    `url` names one on loopback; yields its host, port and a CPU sampler of its process."""
    server = None
    if url is None:
        server = await start_server("hub", out_dir / f"{scenario}-server.log", server_args)
        host, port, pid = server.host, server.port, server.pid
    else:
        host, port = loopback_address(url)
        pid = server_pid or find_listening_pid(port)
    try:
        yield host, port, ProcSampler(pid) if pid else None
    finally:
        if server is not None:
            await server.stop()
