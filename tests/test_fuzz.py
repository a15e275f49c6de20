"""A bounded fuzz run against a live hub: random and truncated WebSocket frames, mangled
upgrades and plain garbage, from many sockets at once, while events are published. The hub
must keep serving its other clients with every event, once and in order, and log no traceback.
The seed is printed (HUB_TEST_SEED replays a run)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import struct
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hub.config import Settings

from .support import FrameRecorder, RunningHub, run_hub, wait_for

ROUNDS = 80  # batches of attacks; each batch runs CONCURRENCY attacks at once
CONCURRENCY = 8

VALID_TEXTS = [
    b'{"op":"subscribe","id":1,"types":["agent.*","*.failed"]}',
    b'{"op":"unsubscribe","id":"u","types":["agent.*"]}',
    b'{"op":"ping","id":7}',
]


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """A client-to-server frame; `length` may lie about the payload's size."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = bytes(random.getrandbits(8) for _ in range(4))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def upgrade_request(path: str = "/v1/projects/p1/ws") -> bytes:
    key = base64.b64encode(random.randbytes(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def random_frames(rng: random.Random) -> bytes:
    """A stream of frames, some valid, some truncated, mangled or against the protocol."""
    out = b""
    for _ in range(rng.randint(1, 6)):
        text = rng.choice(VALID_TEXTS)
        kind = rng.randrange(12)
        if kind == 0:
            out += client_frame(1, text)
        elif kind == 1:
            out += client_frame(1, text[: rng.randrange(len(text))])  # truncated JSON
        elif kind == 2:
            frame = client_frame(1, text)
            out += frame[: rng.randrange(1, len(frame))]  # truncated frame: ends the stream
            break
        elif kind == 3:
            out += client_frame(1, text, length=len(text) + rng.randint(1, 5000))
            break
        elif kind == 4:
            out += client_frame(2, rng.randbytes(rng.randint(0, 50)))  # binary
        elif kind == 5:
            out += client_frame(1, rng.randbytes(rng.randint(1, 50)))  # likely bad UTF-8
        elif kind == 6:
            out += client_frame(1, text, mask=False)  # clients must mask
        elif kind == 7:
            out += client_frame(rng.choice([3, 4, 5, 6, 7, 11, 12, 15]), text)  # reserved ops
        elif kind == 8:
            out += client_frame(1, text, rsv=rng.randint(1, 7))  # no extension: RSV must be 0
        elif kind == 9:
            out += client_frame(9, rng.randbytes(rng.randint(0, 200)))  # ping, maybe too big
        elif kind == 10:
            half = len(text) // 2
            out += client_frame(1, text[:half], fin=False) + client_frame(0, text[half:])
        else:
            out += rng.randbytes(rng.randint(1, 64))  # noise
    return out


async def raw_socket(
    running: RunningHub, data: bytes, rng: random.Random, upgrade: bytes = b""
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        if upgrade:  # frames count only after the 101 (bytes sent before it are dropped)
            writer.write(upgrade)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101"), head
        writer.write(data)
        await writer.drain()
        if rng.random() < 0.5:  # sometimes read what the hub says until it hangs up
            writer.write_eof()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def frames_after_upgrade(running: RunningHub, rng: random.Random) -> None:
    await raw_socket(running, random_frames(rng), rng, upgrade=upgrade_request())


async def mangled_upgrade(running: RunningHub, rng: random.Random) -> None:
    request = bytearray(upgrade_request())
    for _ in range(rng.randint(1, 5)):
        request[rng.randrange(len(request))] = rng.randrange(256)
    cut = rng.randrange(len(request) + 1) if rng.random() < 0.5 else len(request)
    await raw_socket(running, bytes(request[:cut]), rng)


async def garbage(running: RunningHub, rng: random.Random) -> None:
    await raw_socket(running, rng.randbytes(rng.randint(1, 2000)), rng)


async def text_frames(running: RunningHub, rng: random.Random) -> None:
    """A well-formed socket sending random and truncated JSON texts."""
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        async with connect(running.ws_url("p1"), max_size=None, open_timeout=5) as ws:
            for _ in range(rng.randint(1, 10)):
                text = rng.choice(VALID_TEXTS).decode()
                choice = rng.randrange(4)
                if choice == 0:
                    text = text[: rng.randrange(len(text))]
                elif choice == 1:
                    text = "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randint(0, 80)))
                elif choice == 2:
                    text = json.dumps(
                        {
                            "op": rng.choice(["subscribe", "ping", "x"]),
                            "types": [rng.randbytes(4).hex()] * rng.randint(0, 40),
                        }
                    )
                await ws.send(text)


def star_pattern(rng: random.Random) -> str:
    """A pattern a backtracking matcher takes exponential time on (runs of stars, a miss)."""
    pieces = [rng.choice(["*" * rng.randint(1, 40), "a", ".", "z", "a.*"]) for _ in range(8)]
    return ("*" * rng.randint(2, 60) + "".join(pieces) + rng.choice(["z", "q", ""]))[:128]


def hostile_json(rng: random.Random) -> bytes:
    """A JSON value built to break a decoder: deep, huge numbers, raw bytes, surrogates."""
    kind = rng.randrange(6)
    if kind == 0:
        depth = rng.choice([65, 300, 1200, 5000])
        if rng.random() < 0.5:
            return b"[" * depth + b"1" + b"]" * depth
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == 1:
        big = str(2**53 + rng.randint(0, 10**6)).encode()
        return rng.choice([b"1e999999", b"-1e400", b"9" * rng.randint(17, 5000), big, b"NaN"])
    if kind == 2:
        return b'"' + rng.randbytes(rng.randint(1, 40)).replace(b'"', b"") + b'"'  # bad UTF-8
    if kind == 3:
        return rng.choice([b'"\\ud800"', b'"x\\udfff"', b'"\xed\xa0\x80"'])  # lone surrogates
    if kind == 4:
        return b'{"n":' + str(rng.randint(-(2**53) + 1, 2**53 - 1)).encode() + b"}"  # valid
    return b'"' + b"x" * rng.randint(0, 3000) + b'"'


async def hostile_publish(running: RunningHub, rng: random.Random) -> None:
    """Poison, deep or oversized publishes (to another project): 202 or a clean 4xx."""
    value = hostile_json(rng)
    event_type = rng.choice([b"rt.a.b", b"rt." + b"a" * rng.randint(120, 3000) + b".b"])
    field = rng.choice(["data", "key", "id"])
    body = b'{"type":"' + event_type + b'","' + field.encode() + b'":' + value + b"}"
    if rng.random() < 0.3:
        body = b"[" + body + b"," + body + b"]"
    async with running.http() as http:
        response = await http.post("/v1/projects/p2/events", content=body)
    assert response.status_code in (202, 400, 413, 422), (response.status_code, response.text)


async def hostile_ops(running: RunningHub, rng: random.Random) -> None:
    """Star-heavy subscriptions and ops with deep or huge values on the bystanders' project."""
    types = star_pattern(rng) if rng.random() < 0.5 else None
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        async with connect(running.ws_url("p1", types=types), open_timeout=5) as ws:
            for _ in range(rng.randint(1, 6)):
                value = hostile_json(rng).decode("utf-8", "replace")
                star, other = star_pattern(rng), star_pattern(rng)
                op = rng.choice(
                    [
                        '{"op":"subscribe","id":' + value + ',"types":["' + star + '"]}',
                        '{"op":"ping","id":' + value + "}",
                        '{"op":"unsubscribe","types":' + value + "}",
                        '{"op":"subscribe","types":["' + star + '","' + other + '"]}',
                    ]
                )
                await ws.send(op)
                await asyncio.wait_for(ws.recv(), 5)  # a reply or error frame for each


async def star_reads(running: RunningHub, rng: random.Random) -> None:
    """History and snapshot reads of the bystanders' project through star-heavy patterns."""
    async with running.http() as http:
        path = rng.choice(["events", "snapshot"])
        params = {"since": "0", "types": ",".join(star_pattern(rng) for _ in range(3))}
        response = await http.get(f"/v1/projects/p1/{path}", params=params)
    assert response.status_code in (200, 400), (response.status_code, response.text)


ATTACKS: list[Callable[[RunningHub, random.Random], Awaitable[None]]] = [
    frames_after_upgrade,
    frames_after_upgrade,
    mangled_upgrade,
    garbage,
    text_frames,
    hostile_publish,
    hostile_ops,
    star_reads,
]


async def test_a_fuzzed_hub_keeps_serving_every_event_to_its_other_clients(
    rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    random.seed(rng.random())  # the frame masks, from the same seed
    settings = Settings(
        heartbeat_s=5.0, max_inbound_frame=4096, error_budget=5, handshake_timeout_s=2.0
    )
    caplog.set_level(logging.INFO)
    uvicorn_logger = logging.getLogger("uvicorn")
    async with run_hub(settings, log_level="info") as running:
        uvicorn_logger.addHandler(caplog.handler)
        try:
            everyone = [FrameRecorder(await connect(running.ws_url("p1"))) for _ in range(3)]
            agents = FrameRecorder(await connect(running.ws_url("p1", types="agent.*")))
            await wait_for(lambda: running.hub.manager.connection_count == 4, what="bystanders")
            published: list[tuple[int, str]] = []
            for round_ in range(ROUNDS):
                attacks = [rng.choice(ATTACKS)(running, rng) for _ in range(CONCURRENCY)]
                batch = asyncio.gather(*attacks)
                for i in range(3):  # publish while the attacks run
                    event_type = "agent.run.updated" if i % 2 else "ingest.job.updated"
                    seq = await running.hub.publish("p1", event_type, {"round": round_})
                    published.append((seq, event_type))
                    await asyncio.sleep(0)
                await batch

            seqs = [s for s, _ in published]
            agent_seqs = [s for s, t in published if t.startswith("agent.")]
            await wait_for(
                lambda: (
                    all(len(b.seqs) >= len(seqs) for b in everyone)
                    and len(agents.seqs) >= len(agent_seqs)
                ),
                what="every event at every bystander",
            )
            for bystander in everyone:
                assert bystander.seqs == seqs
            assert agents.seqs == agent_seqs
            # the attackers are gone; a newcomer is served
            await wait_for(lambda: running.hub.manager.connection_count == 4, what="fuzzers gone")
            newcomer = FrameRecorder(await connect(running.ws_url("p1", since=0)))
            await wait_for(lambda: newcomer.seqs == seqs, what="newcomer replay")
            for bystander in [*everyone, agents, newcomer]:
                await bystander.close()
            # whatever hostile publish was accepted, every client decodes it
            async with running.http() as http:
                stored = (await http.get("/v1/projects/p2/events?since=0")).content
            for event in msgspec.json.decode(stored)["events"]:
                value = json.loads(json.dumps(event), parse_constant=float, parse_int=_safe_integer)
                json.dumps(value, ensure_ascii=False).encode()  # no lone surrogate
        finally:
            uvicorn_logger.removeHandler(caplog.handler)
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert tracebacks == [], [r.getMessage() for r in tracebacks[:3]]
    closes = [r for r in caplog.records if r.getMessage().startswith("closing websocket")]
    assert closes, "no attack reached the WebSocket parser"


def _safe_integer(text: str) -> int:
    assert abs(int(text)) <= 2**53 - 1, f"stored integer {text[:30]} is beyond JavaScript"
    return int(text)


def test_masked_frames_are_built_right() -> None:
    frame = client_frame(1, b"hi")
    assert frame[0] == 0x81 and frame[1] == 0x82
    key, payload = frame[2:6], frame[6:]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(payload)) == b"hi"
    assert client_frame(1, b"x" * 200, mask=False)[1:4] == bytes([126]) + struct.pack("!H", 200)
    assert client_frame(1, b"", length=70000, mask=False)[1] == 127
