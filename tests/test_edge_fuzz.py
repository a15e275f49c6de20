"""Wire-level fuzz of request heads: random and mutated heads (raw bytes, huge lines, many
headers, bad framing headers, cut heads) are each answered or closed within the deadline,
and a control subscriber on another project gets every event in order throughout."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

from hub.config import Settings

from .edge_support import UPGRADE_HEADERS, capture_logs, control_subscriber
from .support import RunningHub, run_hub, wait_for

DEADLINE = 1.0  # handshake, keep-alive and body deadlines alike
SETTINGS = Settings(
    heartbeat_s=5.0, handshake_timeout_s=DEADLINE, keep_alive_s=DEADLINE, body_timeout_s=DEADLINE
)
CONNECTIONS = 120
CONCURRENCY = 24

TARGETS = [
    b"/v1/projects/p/ws",
    b"/v1/projects/p/events",
    b"/v1/projects/p/events?since=0",
    b"/v1/projects/p/sse",
    b"/v1/projects/p/snapshot",
    # the newer read paths: keys, long poll (a wait inside the deadline), SSE message mode
    b"/v1/projects/p/events?since=0&wait=0.5&keys=ingest.job/*,a**b",
    b"/v1/projects/p/events?since=0&wait=0.5&epoch=zz",
    b"/v1/projects/p/sse?named=0&keys=%ff%fe",
    b"/v1/projects/p/snapshot?keys=,,",
    b"/v1/asyncapi.json",
    b"/healthz",
    b"/",
    b"*",
    b"http://localhost/healthz",
]
FRAMING = [
    b"Content-Length: 5",
    b"Content-Length: -1",
    b"Content-Length: 99999999999999999999",
    b"Content-Length: 0\r\nContent-Length: 3",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked\r\nContent-Length: 4",
    b"Transfer-Encoding: identity",
    b"Expect: 100-continue",
]


def random_head(rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randbytes(rng.randint(1, 3000))
    method = rng.choice([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"G\xffT", b"GET GET"])
    target = rng.choice(TARGETS)
    if kind == 1:  # a huge request line
        target += b"?x=" + b"a" * rng.choice([4000, 8200, 17000, 70000])
    lines = [method + b" " + target + b" " + rng.choice([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9"])]
    lines.append(b"Host: " + rng.choice([b"localhost", b"127.0.0.1:1", b"evil.example", b""]))
    if rng.random() < 0.6:
        lines.append(UPGRADE_HEADERS.rstrip(b"\r\n"))
    if kind == 2:  # many headers
        lines += [b"X-%d: %d" % (i, i) for i in range(rng.choice([100, 129, 400, 2000]))]
    if kind == 3:  # one huge header
        lines.append(b"X-Big: " + b"b" * rng.choice([8000, 8300, 17000, 70000]))
    if kind == 4:  # bad framing headers
        lines += rng.sample(FRAMING, rng.randint(1, 3))
    if kind == 5:  # odd bytes: obs-fold, bare LF, NUL, non-ASCII
        lines.append(
            rng.choice([b" folded", b"X-A: 1\nX-B: 2", b"X-N: \x00", b"X-U: \xc3\xa9\xff"])
        )
    if kind == 6:  # Origin and token spellings
        lines.append(
            rng.choice([b"Origin: null", b"Origin: https://evil.example", b"Origin: \xff"])
        )
        if rng.random() < 0.5:  # a CORS preflight's own headers
            lines.append(
                rng.choice(
                    [
                        b"Access-Control-Request-Method: POST",
                        b"Access-Control-Request-Headers: authorization, x-\xff",
                        b"Access-Control-Request-Method: " + b"P" * 9000,
                    ]
                )
            )
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if rng.random() < 0.3:  # flip a few bytes
        mutated = bytearray(head)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        head = bytes(mutated)
    if rng.random() < 0.2:  # cut short: only the deadline ends it
        head = head[: rng.randrange(len(head))]
    if rng.random() < 0.2:
        head += rng.randbytes(rng.randint(1, 200))  # a body, or a next request's garbage
    return head


async def answered_or_closed(running: RunningHub, head: bytes, rng: random.Random) -> float:
    """Send `head` (in one write or a few); return how long until the hub answered (a status
    line) or closed. Fails past the deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    started = time.monotonic()
    try:
        # a head cut to nothing is a connection that sends nothing: no cuts to make
        pieces = max(0, min(len(head) - 1, rng.randint(0, 3)))
        cuts = sorted(rng.sample(range(1, len(head)), pieces))
        for start, end in zip([0, *cuts], [*cuts, len(head)], strict=True):
            writer.write(head[start:end])
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        received = b""
        async with asyncio.timeout(DEADLINE + 5):
            while b"\r\n" not in received:
                try:
                    chunk = await reader.read(4096)
                except ConnectionError:
                    break
                if not chunk:
                    break
                received += chunk
        assert not received or received.startswith(b"HTTP/1.1 "), received[:100]
        return time.monotonic() - started
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_every_fuzzed_request_head_is_answered_or_closed_within_the_deadline(
    rng: random.Random,
) -> None:
    heads = [random_head(rng) for _ in range(CONNECTIONS)]
    async with run_hub(SETTINGS, log_level="info") as running:
        with capture_logs() as logs:
            async with control_subscriber(running) as control:
                slowest = 0.0
                for first in range(0, CONNECTIONS, CONCURRENCY):
                    batch = heads[first : first + CONCURRENCY]
                    results = asyncio.gather(
                        *(answered_or_closed(running, head, rng) for head in batch)
                    )
                    await control.publish(3)  # while the batch runs
                    slowest = max(slowest, *await results)
                    await control.check()
            assert slowest < DEADLINE + 4  # generous: a loaded machine fires timers late
            await wait_for(lambda: running.hub.manager.connection_count == 0, what="all gone")
    assert logs.tracebacks() == [], logs.tracebacks()[:3]
