"""Real Redis for tests: `redis-server` processes on free loopback ports in a temporary
directory (with or without AOF), kill -9 and restart, a 3-master Cluster, and a TCP proxy that
can blackhole traffic. Never the machine's 6379.

`python -m tests.redis_support publish URL PROJECT COUNT` is a publisher process for the
multi-process tests: it publishes COUNT events through `hub.redis_publisher` and prints the
seqs it got as JSON. `python -m tests.redis_support bench [--persistence always]` prints the
publish rates and memory figures quoted in docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from hub.backends.base import PublishRequest
from hub.config import Settings
from hub.redis_publisher import RedisPublisher

from .support import require

__all__ = [
    "REPO",
    "BlackholeProxy",
    "RedisCluster",
    "RedisServer",
    "fast_settings",
    "free_port",
    "redis_server_binary",
    "running_redis",
]

REPO = Path(__file__).resolve().parent.parent


def fast_settings(url: str, **overrides: object) -> Settings:
    """Redis settings that notice failures in about a second, for tests."""
    options: dict[str, object] = {
        "backend": url,
        "redis_socket_timeout_s": 1.0,
        "redis_connect_timeout_s": 0.5,
        "redis_block_ms": 200,
        "redis_reconnect_max_s": 0.2,
        "redis_epoch_check_s": 0.5,
        "redis_health_check_s": 1.0,
        "heartbeat_s": 5.0,
    }
    options.update(overrides)
    return Settings(**options)  # type: ignore[arg-type]


def redis_server_binary() -> str:
    """The redis-server to start: skip without one, or fail under CI (`require`)."""
    path = shutil.which("redis-server")
    require(None if path else "redis-server is not installed (.ci/run installs it)")
    assert path is not None
    return path


def free_port(*, with_bus: bool = False) -> int:
    """A free loopback port; `with_bus`: port + 10000 (the Cluster bus port) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 <= 65535:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
                return port


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the thread that started it goes away,
    so a test run killed with -9 leaves no redis-server behind (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _ping(port: int) -> bool:
    """True once the server answers PING (not while it is still loading its data)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One `redis-server` on 127.0.0.1; its data directory survives kill() and start()."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        appendonly: bool = False,
        cluster: bool = False,
        extra: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.port = port or free_port(with_bus=cluster)
        self.appendonly = appendonly
        self.cluster = cluster
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        argv = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",  # no RDB snapshots: AOF or nothing, so a restart means what it says
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--dbfilename", f"dump-{self.port}.rdb",
            "--logfile", str(self.directory / f"redis-{self.port}.log"),
            "--protected-mode", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.cluster:
            argv += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.directory / f"nodes-{self.port}.conf"),
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
        return argv + self.extra

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            self._argv(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.process.poll() is not None:
                self.process = None
                log = self.directory / f"redis-{self.port}.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{tail}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.005)

    def kill(self) -> None:
        """kill -9: no shutdown save, no goodbye to clients."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None

    def restart(self) -> None:
        """kill -9, then start again on the same port with whatever the disk holds."""
        self.kill()
        self.start()

    def wipe(self) -> None:
        """Remove persisted data (the server must be stopped)."""
        assert self.process is None
        for path in self.directory.iterdir():
            if path.name.startswith(("dump-", "appendonly")):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            timeout=10,
        )
        return out.stdout.decode()


@contextlib.contextmanager
def running_redis(directory: Path, **options: object) -> Iterator[RedisServer]:
    server = RedisServer(directory, **options)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.kill()


class RedisCluster:
    """Three masters on loopback, slots split by `redis-cli --cluster create`."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.nodes = [RedisServer(directory / f"node{i}", cluster=True) for i in range(masters)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 20.0) -> None:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    "redis-cli", "--cluster", "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas", "0", "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=timeout,
            )  # fmt: skip
            deadline = time.monotonic() + timeout
            while not all("cluster_state:ok" in n.cli("cluster", "info") for n in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("cluster did not reach cluster_state:ok")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


class BlackholeProxy:
    """A TCP proxy to 127.0.0.1:`target_port` that can silently drop everything.

    While blackholed, bytes in either direction vanish and new connections get no upstream:
    the peer sees silence, not a reset, as with a dead link. With `replies_only`, requests
    still reach Redis and only the replies vanish (a reply lost to a timeout). `restore()`
    closes the connections that lost bytes (they are out of step) and forwards again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.blackholed = False
        self.replies_only = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tainted: set[asyncio.StreamWriter] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def blackhole(self, *, replies_only: bool = False) -> None:
        self.replies_only = replies_only
        self.blackholed = True

    def restore(self) -> None:
        self.blackholed = False
        for writer in list(self._tainted):
            writer.close()
        self._tainted.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if self.blackholed and not self.replies_only:  # swallow until restore()
                self._tainted.add(writer)
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(up_writer)
            pair = {writer, up_writer}
            await asyncio.gather(
                self._pump(reader, up_writer, pair, request=True),
                self._pump(up_reader, writer, pair, request=False),
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: set[asyncio.StreamWriter],
        *,
        request: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self.blackholed and not (request and self.replies_only):
                    self._tainted.update(pair)
                    continue
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            for w in pair:
                w.close()
                self._writers.discard(w)


# --- publisher process -----------------------------------------------------------------------


async def _publish_main(url: str, project: str, count: int, batch: int, tag: str) -> None:
    seqs: list[int] = []
    async with RedisPublisher(url, Settings(backend=url)) as publisher:
        i = 0
        while i < count:
            n = min(batch, count - i)
            requests = [
                PublishRequest(
                    "bench.tick", msgspec.Raw(b'{"w":"%s","i":%d}' % (tag.encode(), i + j))
                )
                for j in range(n)
            ]
            seqs += await publisher.publish_requests(project, requests)
            i += n
    sys.stdout.write(msgspec.json.encode(seqs).decode() + "\n")


async def _bench_main(persistence: str, count: int, wait: bool = False, retention: int = 0) -> None:
    """Publish rates, replay time and Redis memory per event on a fresh local redis-server
    (`wait`: with a replica, every publish WAITs for it: redis_wait_replicas=1; `retention`
    below `count`: every publish also trims)."""
    from redis.asyncio import Redis

    from hub.backends.redis import RedisBackend

    data = msgspec.json.encode(
        {"job_id": "j17", "progress": 0.42, "stage": "embed", "m": "x" * 130}
    )
    with tempfile.TemporaryDirectory() as tmp:
        fsync = [] if persistence == "none" else ["--appendfsync", persistence]
        server = RedisServer(Path(tmp), appendonly=persistence != "none", extra=fsync)
        server.start()
        replica = RedisServer(
            Path(tmp) / "replica", extra=["--replicaof", "127.0.0.1", str(server.port)]
        )
        if wait:
            replica.start()
            deadline = time.monotonic() + 30
            while "master_link_status:up" not in replica.cli("info", "replication"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the bench's replica did not sync within 30 s")
                await asyncio.sleep(0.01)  # the replica syncs in milliseconds
        settings = Settings(
            retention_events=retention or count,
            redis_wait_replicas=1 if wait else 0,
        )
        backend = RedisBackend(server.url, settings)
        direct = Redis.from_url(server.url)
        try:

            def event(i: int, project: str) -> PublishRequest:
                key = f"ingest.job/j{i:06d}"
                return PublishRequest(
                    "ingest.job.updated", msgspec.Raw(data), key, f"{project}-{i}"
                )

            started = time.perf_counter()
            for i in range(count):
                await backend.publish("seq", [event(i, "seq")])
            one_by_one = count / (time.perf_counter() - started)

            async def publisher(worker: int) -> None:
                for i in range(count // 20):
                    await backend.publish(f"c{worker}", [event(i, f"c{worker}")])

            started = time.perf_counter()
            await asyncio.gather(*(publisher(w) for w in range(20)))
            concurrent = count // 20 * 20 / (time.perf_counter() - started)
            started = time.perf_counter()
            for i in range(0, count, 100):
                await backend.publish("batch", [event(i + j, "batch") for j in range(100)])
            batched = count / (time.perf_counter() - started)
            started = time.perf_counter()
            await backend.read("seq", 0, 1000)
            replay_ms = (time.perf_counter() - started) * 1000

            async def usage(key: str) -> int:
                return int(await direct.memory_usage(key, samples=0) or 0)

            stream = await usage("hub:{seq}:events")
            snapshot = await usage("hub:{seq}:snap") + await usage("hub:{seq}:snapidx")
            id_key = await usage("hub:{seq}:id:seq-0")
        finally:
            await direct.aclose()
            await backend.close()
            server.kill()
            replica.kill()
    print(
        f"persistence {persistence}{', WAIT 1 replica' if wait else ''}, {len(data)}-byte data,"
        f" {count} keyed events with ids:\n"
        f"  one at a time          {one_by_one:8.0f} events/s\n"
        f"  20 concurrent          {concurrent:8.0f} events/s\n"
        f"  batches of 100         {batched:8.0f} events/s\n"
        f"  read of 1000 events    {replay_ms:8.1f} ms\n"
        f"  memory per event       {stream / count:8.0f} bytes\n"
        f"  memory per snapshot key{snapshot / count:8.0f} bytes\n"
        f"  memory per id          {id_key:8.0f} bytes"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.redis_support")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="publish rates and memory on a fresh redis-server")
    bench.add_argument("--persistence", choices=["none", "always", "everysec"], default="none")
    bench.add_argument("--count", type=int, default=3000)
    bench.add_argument("--wait", action="store_true", help="with a replica and WAIT 1")
    bench.add_argument("--retention", type=int, default=0, help="retention_events (0: count)")
    publish = sub.add_parser("publish")
    publish.add_argument("url")
    publish.add_argument("project")
    publish.add_argument("count", type=int)
    publish.add_argument("--batch", type=int, default=1)
    publish.add_argument("--tag", default=str(os.getpid()))
    args = parser.parse_args(argv)
    if args.command == "bench":
        asyncio.run(_bench_main(args.persistence, args.count, args.wait, args.retention))
    else:
        asyncio.run(_publish_main(args.url, args.project, args.count, args.batch, args.tag))


if __name__ == "__main__":
    main()
