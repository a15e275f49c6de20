"""`hub serve` as a real subprocess on a fixed loopback port, so a test can kill it (-9) and
start it again ON THE SAME PORT: what a client sees when its hub dies and comes back.

An in-process hub (tests/support.py `run_hub`) can only stop gracefully; this one is killed.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from .redis_support import REPO, _die_with_parent, free_port

__all__ = ["HubProcess"]

START_TIMEOUT_S = 30.0


class HubProcess:
    """`python -m hub serve --port <port> <args>`; stderr goes to `<directory>/hub-<n>.log`."""

    def __init__(self, directory: Path, *args: str, port: int | None = None) -> None:
        self.directory = directory
        self.args = list(args)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _log(self) -> Path:
        return self.directory / f"hub-{self.port}-{self.starts}.log"

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self.process is None, "already running"
        self.starts += 1
        argv = [sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--log-level", "warning", *self.args]
        with self._log().open("wb") as log:
            return subprocess.Popen(
                argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )

    async def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start it and wait until `/healthz` answers (or fail with its log)."""
        self.process = self._spawn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                if self.process.poll() is not None:
                    self.process = None
                    raise RuntimeError(f"hub serve exited:\n{self._log().read_text()[-3000:]}")
                try:
                    if (await http.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                if loop.time() > deadline:
                    self.kill()
                    raise RuntimeError(f"hub serve did not answer within {timeout}s")
                await asyncio.sleep(0.02)

    def kill(self) -> None:
        """kill -9: no drain, no close frames; the kernel resets its connections."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None
