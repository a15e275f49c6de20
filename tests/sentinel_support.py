"""Redis Sentinel for tests: a primary, a replica (`--replicaof`) and three Sentinels
(`redis-server sentinel.conf --sentinel`, quorum 2) on free loopback ports, fast failure
detection; and a resuming WebSocket subscriber that checks every frame it gets against the
sequence rules (per epoch, seqs contiguous from where the hub said it starts)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .redis_support import RedisServer, _die_with_parent, _ping, free_port, redis_server_binary

__all__ = ["SERVICE", "ResumingSubscriber", "SentinelSetup"]

SERVICE = "hubprimary"
DOWN_AFTER_MS = 500  # how long a primary may be silent before a Sentinel calls it down
FAILOVER_TIMEOUT_MS = 3_000


def _info(server_port: int, section: str) -> dict[str, str]:
    out = subprocess.run(
        ["redis-cli", "-p", str(server_port), "info", section],
        capture_output=True,
        timeout=5,
        check=False,
    ).stdout.decode()
    pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k: v.strip() for k, v in pairs}


class SentinelProcess:
    def __init__(self, directory: Path, primary_port: int) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            "protected-mode no\n"
            f"dir {directory}\n"
            f"logfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [redis_server_binary(), str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.directory / "sentinel.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                self.kill()
                raise RuntimeError(f"sentinel on port {self.port} did not start:\n{tail}")
            time.sleep(0.005)

    def kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(10)
            self.process = None

    def primary_port(self) -> int | None:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), "sentinel", "get-master-addr-by-name", SERVICE],
            capture_output=True,
            timeout=5,
            check=False,
        ).stdout.split()
        return int(out[1]) if len(out) == 2 else None

    def masters(self) -> dict[str, str]:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), "sentinel", "master", SERVICE],
            capture_output=True,
            timeout=5,
            check=False,
        ).stdout.decode()
        lines = out.splitlines()
        return dict(zip(lines[0::2], lines[1::2], strict=False))


class SentinelSetup:
    """Primary + replica + 3 Sentinels; `url` is the hub's redis+sentinel:// URL."""

    def __init__(self, directory: Path) -> None:
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        self.primary = RedisServer(directory / "primary", extra=fast_sync)
        self.replica = RedisServer(
            directory / "replica",
            extra=[*fast_sync, "--replicaof", "127.0.0.1", str(self.primary.port)],
        )
        self.sentinels = [
            SentinelProcess(directory / f"sentinel{i}", self.primary.port) for i in range(3)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}?db=0"

    def start(self, timeout: float = 20.0) -> None:
        try:
            self.primary.start()
            self.replica.start()
            deadline = time.monotonic() + timeout
            while _info(self.replica.port, "replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not sync with the primary")
                time.sleep(0.01)
            for sentinel in self.sentinels:
                sentinel.start()
            # every Sentinel knows the replica and the two other Sentinels: a failover can run
            while not all(self._sees_everyone(s) for s in self.sentinels):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Sentinels did not discover each other")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _sees_everyone(sentinel: SentinelProcess) -> bool:
        state = sentinel.masters()
        return state.get("num-slaves") == "1" and state.get("num-other-sentinels") == "2"

    def promoted(self) -> bool:
        """Every Sentinel names the replica as the primary, and it says it is one."""
        port = self.replica.port
        return all(s.primary_port() == port for s in self.sentinels) and (
            _info(port, "replication").get("role") == "master"
        )

    def rejoin_old_primary(self, timeout: float = 10.0) -> None:
        """Start the killed primary again as a replica of the promoted one, as its rewritten
        config would after a Sentinel reconfigured it (a Sentinel left to do it waits 8 s)."""
        self.primary.extra = [
            "--repl-diskless-sync-delay", "0",
            "--replicaof", "127.0.0.1", str(self.replica.port),
        ]  # fmt: skip
        self.primary.start()
        deadline = time.monotonic() + timeout
        while _info(self.primary.port, "replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the old primary did not sync with the new one")
            time.sleep(0.01)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
        self.replica.kill()
        self.primary.kill()


@dataclass
class ResumingSubscriber:
    """Subscribes to `project` on a hub and resumes after every close with since + epoch, as
    a client must. Every event is checked as it arrives: within an epoch, seqs go up by one
    from the point the hub said the stream starts (welcome head, or a snapshot's head)."""

    ws_base: str  # ws://host:port/v1/projects/<project>/ws
    events: list[tuple[str, int, Any]] = field(default_factory=list)  # (epoch, seq, data)
    epochs: list[str] = field(default_factory=list)  # every epoch it was told, in order
    violations: list[str] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    epoch: str | None = None
    last: int | None = None
    task: asyncio.Task[None] | None = None
    stopping: bool = False

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def _url(self) -> str:
        if self.epoch is None or self.last is None:
            return self.ws_base
        return f"{self.ws_base}?since={self.last}&epoch={self.epoch}"

    async def _run(self) -> None:
        while not self.stopping:
            try:
                async with connect(self._url(), max_size=None, open_timeout=5) as ws:
                    async for message in ws:
                        decoded = msgspec.json.decode(message)
                        for frame in decoded if isinstance(decoded, list) else [decoded]:
                            self._frame(frame)
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
                pass
            await asyncio.sleep(0.02)  # reconnect backoff, bounded by the caller's wait

    def _frame(self, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == "welcome":
            resumed = self.epoch is not None and frame["epoch"] == self.epoch
            if not resumed:
                if self.epoch is not None:
                    # a new epoch comes with gap + snapshot, which set the start point
                    self.last = None
                else:
                    self.last = frame["head"]
                self.epoch = frame["epoch"]
                self.epochs.append(frame["epoch"])
        elif op == "gap":
            self.gaps.append(frame)
            self.last = None
        elif op == "snapshot":
            if frame.get("more"):
                return
            self.last = frame["head"]
        elif op == "event":
            seq = frame["seq"]
            if self.last is None:
                self.violations.append(f"event {seq} before any start point in {self.epoch}")
            elif seq != self.last + 1:
                self.violations.append(f"epoch {self.epoch}: seq {seq} after {self.last}")
            assert self.epoch is not None
            self.events.append((self.epoch, seq, frame["data"]))
            self.last = seq
