"""The machine side of a run: file-descriptor limit, loopback guard, /proc sampling, machine facts.

Standard library only, so worker processes can import it without pulling in plotting or rich.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "NotLoopback",
    "ProcSample",
    "ProcSampler",
    "busy_percent",
    "cpu_times",
    "find_listening_pid",
    "loopback_address",
    "machine_info",
    "raise_nofile_limit",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class NotLoopback(ValueError):
    """The load generator only ever targets 127.0.0.0/8 or ::1."""


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by child processes); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def loopback_address(url: str) -> tuple[str, int]:
    """(host, port) of an http:// or ws:// URL on loopback; NotLoopback for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "ws"):
        raise NotLoopback(f"{url!r}: only plain http:// or ws:// on loopback is supported")
    host = parts.hostname or ""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise NotLoopback(
            f"refusing to load {host or url!r}: only 127.0.0.1 or ::1 may be targeted"
        )
    return host, parts.port or 80


def find_listening_pid(port: int) -> int | None:
    """Pid of the (own-user) process listening on a TCP port, from /proc/net and /proc/*/fd."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None


@dataclass(frozen=True)
class ProcSample:
    t: float  # wall clock
    rss: int  # bytes
    cpu: float  # user + system seconds since the process started


class ProcSampler:
    """RSS and CPU of one pid from /proc; None once the process is gone."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._last: ProcSample | None = None

    def sample(self) -> ProcSample | None:
        try:
            statm = Path(f"/proc/{self.pid}/statm").read_text().split()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
        return ProcSample(time.time(), int(statm[1]) * _PAGE, cpu)

    def cpu_percent(self) -> float | None:
        """CPU use since the previous call, in percent of one core."""
        now = self.sample()
        if now is None:
            return None
        last, self._last = self._last, now
        if last is None or now.t <= last.t:
            return None
        return round(100 * (now.cpu - last.cpu) / (now.t - last.t), 1)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all cores since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Share of all cores busy between two cpu_times() readings."""
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 1) if total > 0 else None


def _versions() -> dict[str, str]:
    out = {}
    for name in ("websockets", "uvicorn", "starlette", "msgspec"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            text=True,
            capture_output=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            text=True,
            capture_output=True,
            timeout=5,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    return None


def machine_info() -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "memory_mib": mem_kib // 1024 if mem_kib else None,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "packages": _versions(),
        "git_commit": _git_commit(),
    }
