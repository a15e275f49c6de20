"""Where the memory of idle WebSocket connections goes (issue 16, part 3).

    python -m loadtest.memory_profile -n 10000              # RSS per idle connection
    python -m loadtest.memory_profile -n 1000 --tracemalloc # what holds it, by line and type

The hub runs in this process (as `hub serve` does: default settings, memory backend, the
fast WebSocket path, gc tuned); the subscribers run in one child process on loopback. They
complete the handshake, read their `welcome`, answer pings and otherwise stay idle. RSS per
connection is (RSS with N connected - RSS before the first) / N, as the load test's
`rss_per_connection_kib`. With --tracemalloc the same run also prints the allocations that
the N connections added (grouped by line and by file), the gc-tracked objects they added
(by type, with sys.getsizeof totals) and the shallow sizes of one connection's objects.
Every wait is bounded; the subscribers exit when this process closes their stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import struct
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from typing import Any

__all__ = ["main"]

KIB = 1024
MASK = b"\0\0\0\0"  # clients must mask; a zero mask keeps the payload as is


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KIB
    raise RuntimeError("no VmRSS in /proc/self/status")


# --- the subscribers' process -------------------------------------------------------------


class IdleSubscriber(asyncio.Protocol):
    """One WebSocket subscriber: handshake, then only answers pings."""

    def __init__(self, host: str, port: int, path: str, welcomed: asyncio.Future[None]) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
        ).encode()
        self.welcomed = welcomed
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError(f"closed before welcome: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            self.upgraded, self.buffer = True, rest
        while len(self.buffer) >= 2:
            opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
            start = 2
            if length == 126:
                (length,), start = struct.unpack("!H", self.buffer[2:4]), 4
            elif length == 127:
                (length,), start = struct.unpack("!Q", self.buffer[2:10]), 10
            if len(self.buffer) < start + length:
                return
            payload = self.buffer[start : start + length]
            self.buffer = self.buffer[start + length :]
            if opcode == 0x9 and self.transport is not None:  # ping: pong with its payload
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + MASK + payload)
            elif opcode == 0x1 and not self.welcomed.done():
                self.welcomed.set_result(None)


async def run_subscribers(host: str, port: int, count: int, concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    kept: list[asyncio.BaseTransport] = []

    async def one() -> None:
        async with gate:
            welcomed: asyncio.Future[None] = loop.create_future()
            path = "/v1/projects/idle/ws"
            transport, _ = await loop.create_connection(
                lambda: IdleSubscriber(host, port, path, welcomed), host, port
            )
            kept.append(transport)
            async with asyncio.timeout(30):
                await welcomed

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(count)))
    print(f"connected {len(kept)} {time.monotonic() - started:.1f}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the profiler closes stdin
    for transport in kept:
        transport.close()


# --- the hub's process --------------------------------------------------------------------


def shallow(obj: Any) -> int:
    """sys.getsizeof of obj plus its instance dict, if it has one."""
    size = sys.getsizeof(obj)
    attrs = getattr(obj, "__dict__", None)
    return size + (sys.getsizeof(attrs) if attrs is not None else 0)


def type_counts() -> Counter[str]:
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        counts[f"{type(obj).__module__}.{type(obj).__qualname__}"] += 1
    return counts


def type_sizes() -> dict[str, int]:
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        sizes[f"{type(obj).__module__}.{type(obj).__qualname__}"] += sys.getsizeof(obj)
    return dict(sizes)


def connection_objects(server: Any) -> list[tuple[str, int]]:
    """Shallow sizes of the objects of one idle connection (the first still open)."""
    proto = next(iter(server.server_state.connections))
    rows: list[tuple[str, int]] = [(f"uvicorn protocol ({type(proto).__name__})", shallow(proto))]
    conn = getattr(proto, "conn", None)
    if conn is not None:
        rows.append(("websockets ServerProtocol", shallow(conn)))
        reader = getattr(conn, "reader", None)
        if reader is not None:
            rows.append(("websockets StreamReader", shallow(reader)))
            buffer = getattr(reader, "buffer", None)
            if buffer is not None:
                rows.append(("  its buffer (bytearray)", sys.getsizeof(buffer)))
        parser = getattr(conn, "parser", None)
        if parser is not None:
            rows.append(("websockets parser generator", sys.getsizeof(parser)))
            depth = 0
            while parser is not None and depth < 8:
                frame = getattr(parser, "gi_frame", None)
                if frame is not None:
                    rows.append((f"  generator frame {frame.f_code.co_name}", sys.getsizeof(frame)))
                parser = getattr(parser, "gi_yieldfrom", None)
                depth += 1
        for name in ("events", "writes"):
            value = getattr(conn, name, None)
            if value is not None:
                rows.append((f"  ServerProtocol.{name}", sys.getsizeof(value)))
    for name in ("queue", "writable", "scope", "channel"):
        value = getattr(proto, name, None)
        if value is not None:
            rows.append((f"protocol.{name} ({type(value).__name__})", shallow(value)))
    queue = getattr(proto, "queue", None)
    if queue is not None and hasattr(queue, "_queue"):
        rows.append(("  queue's deque", sys.getsizeof(queue._queue)))
    transport = getattr(proto, "transport", None)
    if transport is not None:
        rows.append((f"transport ({type(transport).__name__})", shallow(transport)))
        buffer = getattr(transport, "_buffer", None)
        if buffer is not None:
            rows.append(("  transport write buffer", sys.getsizeof(buffer)))
    tasks = list(server.server_state.tasks)
    if tasks:
        task = tasks[0]
        rows.append(("ASGI task", shallow(task)))
        coro: Any = task.get_coro()
        depth = 0
        while coro is not None and depth < 16:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            code = frame.f_code.co_name if frame is not None else type(coro).__name__
            size = sys.getsizeof(coro) + (sys.getsizeof(frame) if frame is not None else 0)
            rows.append((f"  coroutine {code}", size))
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
            depth += 1
    hub = server.hub
    connection = next(iter(hub.manager.connections()), None)
    if connection is not None:
        rows.append(("hub Connection", shallow(connection)))
        rows.append(("hub sink", shallow(connection.sink)))
    return rows


async def profile(args: argparse.Namespace) -> None:
    from hub.app import create_app
    from hub.config import Settings
    from hub.transports.gc_tuning import tune_gc
    from hub.transports.server import (
        HubServer,
        listen_socket,
        raise_open_files_limit,
        uvicorn_config,
    )

    limit = raise_open_files_limit()
    if limit < args.connections + 200:
        raise SystemExit(f"open files limit {limit} is below {args.connections} + 200")
    settings = Settings.from_env()
    app = create_app(settings)
    sock = listen_socket("127.0.0.1", 0)
    server = HubServer(uvicorn_config(app, "127.0.0.1", 0, settings, log_level="warning"))
    serving = asyncio.create_task(server.serve([sock]))
    async with asyncio.timeout(30):
        while not server.started:
            if serving.done():
                await serving
            await asyncio.sleep(0.01)
    tune_gc(settings.gc_gen0_threshold)
    port = server.port
    loop_name = type(asyncio.get_running_loop()).__module__
    gc.collect()
    if args.tracemalloc:
        tracemalloc.start(args.frames)
    counts_before = type_counts() if args.tracemalloc else Counter()
    sizes_before = type_sizes() if args.tracemalloc else {}
    before = tracemalloc.take_snapshot() if args.tracemalloc else None
    rss_before = rss_bytes()

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.memory_profile",
        "--subscribers",
        f"127.0.0.1:{port}",
        "-n",
        str(args.connections),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        async with asyncio.timeout(args.connect_timeout):
            line = (await child.stdout.readline()).decode().split()
        if not line or line[0] != "connected":
            raise SystemExit("the subscribers' process failed (see its stderr)")
        connect_s = float(line[2])
        async with asyncio.timeout(30):  # every subscriber registered with the manager
            while len(server.hub.manager.connections()) < args.connections:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # bounded settle: welcome writes flushed, timers armed
        rss_after = rss_bytes()
        report(args, loop_name, connect_s, rss_before, rss_after)
        if args.tracemalloc:
            assert before is not None
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            print_tracemalloc(before, after, args.connections, args.top, args.tracebacks)
            del before, after  # their traces are tuples: not to be counted as the hub's
            print_types(counts_before, sizes_before, args.connections, args.top)
            print("\none connection's objects (shallow sys.getsizeof, bytes):")
            for name, size in connection_objects(server):
                print(f"  {size:>7,}  {name}")
    finally:
        child.stdin.close()
        async with asyncio.timeout(30):
            await child.wait()
        server.should_exit = True
        async with asyncio.timeout(30):
            await serving


def report(
    args: argparse.Namespace, loop_name: str, connect_s: float, before: int, after: int
) -> None:
    n = args.connections
    print(
        f"{n} idle connections ({loop_name}, connected in {connect_s:.1f}s): RSS "
        f"{before / KIB / KIB:.1f} -> {after / KIB / KIB:.1f} MiB, "
        f"{(after - before) / n / KIB:.1f} KiB per connection"
        + (" (tracemalloc on: RSS includes its own bookkeeping)" if args.tracemalloc else ""),
        flush=True,
    )


def print_tracemalloc(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, top: int, tracebacks: int
) -> None:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"\ntracemalloc: +{total / n:,.0f} bytes per connection in Python allocations")
    print(f"\ntop {top} lines (bytes per connection, allocations per connection):")
    for stat in stats[:top]:
        frame = stat.traceback[0]
        print(
            f"  {stat.size_diff / n:>8,.0f}  {stat.count_diff / n:>5.1f}  "
            f"{_short(frame.filename)}:{frame.lineno}"
        )
    if tracebacks:
        print(f"\ntop {tracebacks} allocation sites with their callers:")
        for stat in after.compare_to(before, "traceback")[:tracebacks]:
            print(f"  {stat.size_diff / n:>8,.0f}  {stat.count_diff / n:>5.1f}")
            for frame in stat.traceback:
                print(f"            {_short(frame.filename)}:{frame.lineno}")
    print(f"\ntop {min(top, 12)} files:")
    for stat in after.compare_to(before, "filename")[: min(top, 12)]:
        name = _short(stat.traceback[0].filename)
        print(f"  {stat.size_diff / n:>8,.0f}  {stat.count_diff / n:>5.1f}  {name}")


def print_types(
    counts_before: Counter[str], sizes_before: dict[str, int], n: int, top: int
) -> None:
    gc.collect()
    counts = type_counts()
    sizes = type_sizes()
    rows = sorted(
        (
            (sizes.get(t, 0) - sizes_before.get(t, 0), counts[t] - counts_before[t], t)
            for t in counts
        ),
        reverse=True,
    )
    print(f"\ntop {top} gc-tracked types added (bytes per connection, objects per connection):")
    for size, count, name in rows[:top]:
        print(f"  {size / n:>8,.0f}  {count / n:>5.2f}  {name}")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return os.path.relpath(path) if path.startswith(os.getcwd()) else path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.memory_profile", description=__doc__)
    parser.add_argument("-n", "--connections", type=int, default=1000)
    parser.add_argument("--tracemalloc", action="store_true", help="also profile allocations")
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc frames per trace")
    parser.add_argument(
        "--tracebacks", type=int, default=0, help="also the top N sites with --frames callers"
    )
    parser.add_argument("--top", type=int, default=25, help="rows per profile table")
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--subscribers", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=200, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.subscribers:
        from .system import raise_nofile_limit

        raise_nofile_limit()
        host, port = args.subscribers.rsplit(":", 1)
        asyncio.run(run_subscribers(host, int(port), args.connections, args.concurrency))
        return
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(profile(args))


if __name__ == "__main__":
    main()
