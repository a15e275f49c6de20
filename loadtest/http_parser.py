"""h11 or httptools for the hub's HTTP side? (issue 16, part 4)

    python -m loadtest.http_parser --seconds 5 --loop uvloop

Runs the hub in a child process twice, once with its own h11 protocol (the request-head
deadline and the 431 head limit, hub.transports.server) and once with uvicorn's stock
httptools protocol, and measures what the parser carries: publish requests per second
(POST /v1/projects/p/events, one small event each, `--in-flight` requests at a time over
keep-alive connections) and WebSocket upgrades per second (connect, welcome, close). Needs
httptools installed (`pip install httptools`); it is not a dependency of the hub.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from typing import Any

from websockets.asyncio.client import connect

__all__ = ["main"]


async def _publish_rate(port: int, seconds: float, in_flight: int) -> float:
    """Keep-alive connections, each one request at a time, read with a minimal parser (an
    HTTP client library would cost more than the server's parser being measured)."""
    body = b'{"type":"bench.tick","data":{"i":1}}'
    request = (
        b"POST /v1/projects/p/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                async with asyncio.timeout(10):
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 202"), head
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                done += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return done / (time.monotonic() - started)


async def _upgrade_rate(port: int, seconds: float, in_flight: int) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with connect(f"ws://127.0.0.1:{port}/v1/projects/p/ws") as ws:
                await asyncio.wait_for(ws.recv(), 10)  # the welcome
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return done / (time.monotonic() - started)


async def _serve(http: str) -> None:
    """The hub with this HTTP protocol, in this process, until stdin closes."""
    from hub.app import create_app
    from hub.config import Settings
    from hub.transports.server import HubServer, listen_socket, uvicorn_config

    settings = Settings.from_env(strict_types=False)
    app = create_app(settings)
    overrides: dict[str, Any] = {"log_level": "warning"}
    if http == "httptools":
        overrides["http"] = "httptools"
    sock = listen_socket("127.0.0.1", 0)
    server = HubServer(uvicorn_config(app, "127.0.0.1", 0, settings, **overrides))
    serving = asyncio.create_task(server.serve([sock]))
    async with asyncio.timeout(30):
        while not server.started:
            if serving.done():
                await serving
            await asyncio.sleep(0.01)
    print(server.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.should_exit = True
    async with asyncio.timeout(30):
        await serving


async def _measure(http: str, args: argparse.Namespace) -> dict[str, Any]:
    """Hub in a child process (so the client does not share its loop), clients here."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.http_parser", "--serve", http, "--loop", args.loop,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        async with asyncio.timeout(30):
            port = int((await child.stdout.readline()).decode())
        publishes = await _publish_rate(port, args.seconds, args.in_flight)
        upgrades = await _upgrade_rate(port, args.seconds, args.in_flight)
    finally:
        child.stdin.close()
        async with asyncio.timeout(30):
            await child.wait()
    return {"http": http, "publishes_per_s": publishes, "upgrades_per_s": upgrades}


async def _run(args: argparse.Namespace) -> None:
    for http in ("h11", "httptools"):
        result = await _measure(http, args)
        print(
            f"{result['http']:>9}: {result['publishes_per_s']:,.0f} publish requests/s, "
            f"{result['upgrades_per_s']:,.0f} upgrades/s",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.http_parser", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--serve", choices=("h11", "httptools"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from hub.event_loop import loop_factory

    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(_serve(args.serve) if args.serve else _run(args))


if __name__ == "__main__":
    main()
