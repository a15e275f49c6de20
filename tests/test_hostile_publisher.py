"""HubPublisher against servers that are not (well-behaved) hubs, on loopback: an answer
trickled a byte at a time, an endless answer, a 200 whose body is not the seqs. Each ends in
PublishFailed within the publisher's bounds (time, answer size), never a hang or a raw
decoder error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from hub.publisher import MAX_ANSWER_BYTES, HubPublisher, PublishFailed

MiB = 1024 * 1024
Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


class HostileServer:
    """A loopback HTTP server that reads each request's head and body, then lets `answer`
    write whatever it likes; counts the bytes it managed to send."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sent = 0
        self.requests = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            self.requests += 1
            await self.answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the publisher hung up: what these tests expect of it
        finally:
            writer.close()

    async def write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.sent += len(data)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            yield f"http://127.0.0.1:{port}"
            server.close()


def publisher(url: str) -> HubPublisher:
    return HubPublisher(url, "p1", timeout=0.5, connect_timeout=0.5, retries=2, backoff=0.01)


async def test_a_trickled_answer_cannot_hold_the_publisher_past_its_timeout() -> None:
    server: HostileServer

    async def trickle(writer: asyncio.StreamWriter) -> None:
        await server.write(writer, b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
        for _ in range(3000):  # a byte every 20 ms: each read is quick, the answer never ends
            await server.write(writer, b" ")
            await asyncio.sleep(0.02)

    server = HostileServer(trickle)
    async with server.serving() as url, publisher(url) as pub:
        async with asyncio.timeout(20):  # 3 attempts of 0.5 s each, and short backoffs
            with pytest.raises(PublishFailed, match=r"no whole answer within 0\.5s"):
                await pub.publish("note.added", {"n": 1})
    assert server.requests == 3


async def test_an_endless_answer_is_cut_at_max_answer_bytes() -> None:
    server: HostileServer
    chunk = b"x" * MiB

    async def flood(writer: asyncio.StreamWriter) -> None:
        await server.write(writer, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(256):  # 256 MiB at most, then the test would fail on `sent`
            await server.write(writer, b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await server.write(writer, b"0\r\n\r\n")

    server = HostileServer(flood)
    async with server.serving() as url:
        pub = HubPublisher(url, "p1", timeout=30, retries=2)
        async with pub:
            async with asyncio.timeout(30):
                with pytest.raises(PublishFailed, match="not a hub's answer"):
                    await pub.publish("note.added", {"n": 1})
    assert server.requests == 1, "an oversized answer is not retried"
    # What the kernel buffers beyond what was read is a few MiB at most.
    assert server.sent < 64 * MiB, f"the publisher read {server.sent} bytes of one answer"
    assert MAX_ANSWER_BYTES < 64 * MiB


@pytest.mark.parametrize(
    "body",
    [b"<html>proxy login</html>", b'{"seqs": ["one"]}', b'{"accepted": 1}', b"", b"\xff\xfe"],
)
async def test_a_2xx_without_seqs_is_publish_failed_not_a_decoder_error(body: bytes) -> None:
    server: HostileServer

    async def garbage(writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 202 Accepted\r\ncontent-length: %d\r\n\r\n" % len(body)
        await server.write(writer, head + body)

    server = HostileServer(garbage)
    async with server.serving() as url, publisher(url) as pub:
        async with asyncio.timeout(20):
            with pytest.raises(PublishFailed, match="answered 202 without the seqs"):
                await pub.publish("note.added", {"n": 1})
