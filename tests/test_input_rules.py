"""The input rules (hub/wire/json_rules.py): a table of JSON texts and in-process values, each
accepted or refused with the path of the bad field, on every publish path but HTTP (which
tests/test_input_rules_live.py drives over real sockets), and HubClient's undecodable frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve

from hub.backends.base import PublishRequest
from hub.backends.memory import MemoryBackend
from hub.client import HubClient, HubClientError, UndecodableFrame, decode_frames
from hub.config import Settings
from hub.core import Hub
from hub.errors import EventValidationError, PayloadTooLarge
from hub.protocol import EventFrame, FrameError, PingOp, decode_client_frame
from hub.redis_publisher import RedisPublisher
from hub.wire.catalog import EventCatalog
from hub.wire.json_rules import MAX_SAFE_INTEGER, JsonRuleError, check_json

from .support import wait_for

PURE = settings(max_examples=300, deadline=None, database=None)


def deep(n: int, inner: str = "1") -> str:
    return "[" * n + inner + "]" * n


# --- check_json: a table ------------------------------------------------------------------

REFUSED: list[tuple[bytes, str, str]] = [
    (b'{"a":"\xff\xfe"}', "invalid UTF-8", "$.a"),
    (b'{"a":["ok","\xed\xa0\x80"]}', "invalid UTF-8", "$.a[1]"),  # an encoded surrogate
    (b'{"a":"\\ud800"}', "lone UTF-16 surrogate \\ud800", "$.a"),
    (b'{"a":"x\\udc00y"}', "lone UTF-16 surrogate \\udc00", "$.a"),
    (b'{"a":"\\ude00\\ud83d"}', "lone UTF-16 surrogate", "$.a"),  # a pair in the wrong order
    (b'{"\\ud800":1}', "lone UTF-16 surrogate", "$[\\ud800]"),  # the key itself
    (b'{"x":{"y":[0,1e999999]}}', "not finite", "$.x.y[1]"),
    (b"[-1E309]", "not finite", "$[0]"),
    (b"[" + b"1" * 5000 + b"]", "outside JavaScript's exact range", "$[0]"),
    (b'{"n":9007199254740992}', "outside JavaScript's exact range", "$.n"),
    (b'{"n":-9007199254740992}', "outside JavaScript's exact range", "$.n"),
    (deep(1000).encode(), "nested deeper than 64 levels", "$" + "[0]" * 64),
    (b'{"a b":' + deep(70).encode() + b"}", "nested deeper than 64", "$[a b]" + "[0]" * 63),
]

ACCEPTED: list[bytes] = [
    b'{"n":9007199254740991,"m":-9007199254740991}',
    b'{"a":"\\ud83d\\ude00","b":"\\\\ud800","c":"\xf0\x9f\x98\x80"}',  # a pair, an escaped \
    b"[0.30000000000000004,1e308,1.5e-400,12345678901234567890.5]",
    b'{"not_numbers":"1e999999 9007199254740992","brackets":"[[[[[[[[[[[[[[[[[[[["}',
    deep(64).encode(),
    b'{"type":"a.b","data":1}' * 2,  # malformed: left to the decoder, which says so
    b'{"a":"unterminated',
]


@pytest.mark.parametrize(("text", "reason", "path"), REFUSED, ids=range(len(REFUSED)))
def test_check_json_refuses_and_names_the_field(text: bytes, reason: str, path: str) -> None:
    with pytest.raises(JsonRuleError) as info:
        check_json(text, 64)
    assert reason in info.value.reason
    assert info.value.path == path
    assert info.value.message.endswith(f"- at `{path}`")


@pytest.mark.parametrize("text", ACCEPTED, ids=range(len(ACCEPTED)))
def test_check_json_accepts_what_every_client_decodes(text: bytes) -> None:
    check_json(text, 64)


def test_check_json_puts_the_path_under_the_given_one() -> None:
    with pytest.raises(JsonRuleError) as info:
        check_json(b'[{"a":1},{"b":[true,1e400]}]', 8, "$[2].data")
    assert info.value.path == "$[2].data[1].b[1]"


def test_the_integer_rule_is_javascripts() -> None:
    assert MAX_SAFE_INTEGER == 2**53 - 1 == 9007199254740991


# --- big bodies: past 64 KiB a violation is named by its byte offset, and cheaply ----------


def big_array(element: bytes, last: bytes, size: int = 1_000_000) -> bytes:
    return b"[" + b",".join([element] * (size // (len(element) + 1))) + b"," + last + b"]"


@pytest.mark.parametrize(
    ("last", "reason"),
    [
        (b'"\xff"', "invalid UTF-8"),
        (b'"\\ud800"', "lone UTF-16 surrogate \\ud800"),
        (b"1e999", "number 1e999 is out of range"),
        (b"9007199254740992", "integer 9007199254740992 is outside"),
        (b"[" * 70 + b"]" * 70, "nested deeper than 64 levels"),
    ],
    ids=["utf8", "surrogate", "finite", "integer", "depth"],
)
@pytest.mark.parametrize("element", [b"1", b'"a,b"', b'{"a":[1,{"b":2}]}', b"[" * 8 + b"]" * 8])
def test_a_violation_deep_in_a_big_body_is_named_by_its_byte_offset(
    element: bytes, last: bytes, reason: str
) -> None:
    body = big_array(element, last)
    with pytest.raises(JsonRuleError) as info:
        check_json(body, 64)
    assert reason in info.value.reason
    assert info.value.path == "$" and info.value.offset is not None
    assert len(body) - len(last) - 1 <= info.value.offset < len(body) - 1, "inside `last`"
    assert info.value.message.endswith(f"- at byte {info.value.offset} of `$`")


def test_refusing_a_hostile_1_mib_body_costs_about_what_parsing_one_costs() -> None:
    # Each body makes the check trace or locate a violation at its very end. The baseline,
    # measured in the same run: stdlib json parsing a 1 MiB array of numbers (best of 3).
    reference = big_array(b"1", b"1")
    baseline = best_of_3(lambda: json.loads(reference))
    for element in (b"1", b'{"a":1}', b"[" * 8 + b"1" + b"]" * 8, b'"x"', b'"\\u00e9"'):
        bad = big_array(element, b"1e999")
        cost = best_of_3(lambda bad=bad: refused(bad))  # type: ignore[misc]
        print(f"{element[:12]!r}: {cost * 1000:.0f} ms; json.loads: {baseline * 1000:.0f} ms")
        assert cost < 15 * baseline  # 2-6 times here; a token-by-token scan: 20-80 times


def refused(body: bytes) -> None:
    with pytest.raises(JsonRuleError):
        check_json(body, 64, envelope=2)


def best_of_3(action: Callable[[], object]) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


# --- the path is right whatever the shape (property) --------------------------------------

leaves = st.integers(-(2**53) + 1, 2**53 - 1) | st.text(alphabet='a,[]{}":\\ ', max_size=6)
shapes = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=70)
        | st.dictionaries(st.from_regex(r"\A[a-z]{1,3}\Z"), inner, max_size=6)
    ),
    max_leaves=200,
)
BAD = "@@bad@@"


def leaf_paths(value: Any, path: str = "$") -> list[tuple[str, list[Any]]]:
    """Every leaf's path and the keys that lead to it (an explicit stack)."""
    found: list[tuple[str, list[Any]]] = []
    stack: list[tuple[Any, str, list[Any]]] = [(value, path, [])]
    while stack:
        item, where, keys = stack.pop()
        if isinstance(item, list) and item:
            stack.extend((v, f"{where}[{i}]", [*keys, i]) for i, v in enumerate(item))
        elif isinstance(item, dict) and item:
            stack.extend((v, f"{where}.{k}", [*keys, k]) for k, v in item.items())
        else:
            found.append((where, keys))
    return found


@PURE
@given(shape=shapes, data=st.data())
def test_the_reported_path_is_the_bad_leafs(shape: Any, data: st.DataObject) -> None:
    path, keys = data.draw(st.sampled_from(leaf_paths(shape)))
    if not keys:
        shape = BAD
    else:
        parent = shape
        for key in keys[:-1]:
            parent = parent[key]
        parent[keys[-1]] = BAD
    text = json.dumps(shape).replace(f'"{BAD}"', "1e999").encode()
    with pytest.raises(JsonRuleError) as info:
        check_json(text, 64)
    assert info.value.path == path


# --- the rule holds for any JSON text (property) -------------------------------------------

numbers = st.from_regex(r"\A-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,5})?([eE][+-]?[0-9]{1,6})?\Z")
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(alphabet=st.characters(codec=None), max_size=8)  # surrogates included
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=10,
)


def encoded_variants(value: Any) -> list[bytes]:
    """How publishers write a value: escaped ASCII, raw UTF-8 (surrogates passed through)."""
    ascii_text = json.dumps(value).encode()
    raw = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return [ascii_text, raw]


@PURE
@given(value=values | numbers | st.integers(1, 3000).map(deep))
def test_check_json_refuses_exactly_what_a_strict_client_cannot_decode(value: Any) -> None:
    for text in encoded_variants(value) if not isinstance(value, str) else [value.encode()]:
        try:
            check_json(text, 64)
        except JsonRuleError as exc:
            assert exc.path.startswith("$")
            continue
        # Accepted: msgspec and strict stdlib json decode it to the same value.
        try:
            strict = json.loads(text, parse_constant=_refuse_constant)
        except ValueError:
            continue  # not JSON at all (NaN, Infinity): the decoder refuses it on publish
        assert msgspec.json.decode(text) == strict


def _refuse_constant(name: str) -> None:
    raise ValueError(name)


# --- client ops ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        '{"op":"ping","id":' + deep(2000) + "}",
        '{"op":"subscribe","types":' + deep(2000, '"a.*"') + "}",
        '{"op":"unsubscribe","id":1,"types":["a.*"],"x":' + deep(5000) + "}",
        "[" * 100_000,
    ],
    ids=["deep id", "deep types", "deep unknown field", "unclosed"],
)
def test_a_deep_client_op_is_a_frame_error_not_a_recursion_error(frame: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_client_frame(frame, 64)
    assert info.value.code == "bad_request"
    assert "nested deeper than 64 levels" in info.value.message


def test_a_client_op_id_beyond_javascripts_range_is_refused() -> None:
    with pytest.raises(FrameError, match="exact range"):
        decode_client_frame('{"op":"ping","id":9007199254740992}')
    assert decode_client_frame('{"op":"ping","id":9007199254740991}') == PingOp(2**53 - 1)


# --- in-process Hub.publish and the Redis publisher ----------------------------------------


@pytest.fixture
def hub() -> Hub:
    return Hub(Settings(), MemoryBackend(Settings()), EventCatalog())


def nested_dict(n: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(n):
        value = {"a": value}
    return value


BAD_VALUES: list[tuple[Any, str, str]] = [
    (float("nan"), "not finite", "$.data"),
    ({"a": [1, float("inf")]}, "not finite", "$.data.a[1]"),
    (2**60, "exact range", "$.data"),
    ({"n": -(2**53)}, "exact range", "$.data.n"),
    ({"s": "ok\ud800"}, "lone UTF-16 surrogate", "$.data.s"),
    ("\udfff", "lone UTF-16 surrogate", "$.data"),
    (nested_dict(100), "nested deeper than 64 levels", "$.data" + ".a" * 64),
    (nested_dict(5000), "nested deeper than", "$.data"),
]


@pytest.mark.parametrize(("data", "reason", "path"), BAD_VALUES, ids=range(len(BAD_VALUES)))
async def test_in_process_publish_refuses_what_json_cannot_carry(
    hub: Hub, data: Any, reason: str, path: str
) -> None:
    with pytest.raises(EventValidationError) as info:
        await hub.publish("p1", "rt.a.b", data)
    assert reason in info.value.message
    assert info.value.message.endswith(f"- at `{path}`")
    assert (await hub.backend.position("p1")).head == 0, "nothing was stored"


async def test_in_process_publish_refuses_long_types_and_bad_keys(hub: Hub) -> None:
    with pytest.raises(EventValidationError, match=r"128 character limit - at `\$.type`"):
        await hub.publish("p1", "rt.a." + "b" * 900_000, 1)
    with pytest.raises(EventValidationError, match=r"lone surrogate - at `\$.key`"):
        await hub.publish("p1", "rt.a.b", 1, key="k\ud800")
    with pytest.raises(PayloadTooLarge):
        await Hub(Settings(max_event_bytes=100), hub.backend, hub.catalog).publish(
            "p1", "rt.a.b", "x" * 200
        )
    assert await hub.publish("p1", "rt.a.b", {"n": MAX_SAFE_INTEGER, "f": 0.5}) == 1


async def test_the_redis_publisher_refuses_before_reaching_redis() -> None:
    # Nothing listens on port 1: a refusal must come from the checks, not from a connection.
    publisher = RedisPublisher("redis://127.0.0.1:1/0", retries=0)
    try:
        for data in (float("nan"), 2**60, {"s": "\ud800"}, nested_dict(1000)):
            with pytest.raises(EventValidationError):
                await publisher.publish("p1", "rt.a.b", data)
        bad = PublishRequest("rt.a.b", msgspec.Raw(b'{"a":"\xff\xfe"}'))
        with pytest.raises(EventValidationError, match=r"invalid UTF-8.*`\$\.data\.a`"):
            await publisher.publish_requests("p1", [bad])
        assert publisher.attempts == 0
    finally:
        await publisher.aclose()


# --- HubClient: decoding what it can ------------------------------------------------------


def event(seq: int, data: bytes) -> bytes:
    return b'{"op":"event","project":"p","seq":%d,"type":"a.b","ts":1,"data":%s}' % (seq, data)


def test_client_decodes_the_good_events_batched_with_a_bad_one() -> None:
    message = b"[" + b",".join([event(1, b"1"), event(2, b'"\xff\xfe"'), event(3, b"3")]) + b"]"
    frames = decode_frames(message)
    assert [type(f) for f in frames] == [EventFrame, UndecodableFrame, EventFrame]
    bad = frames[1]
    assert isinstance(bad, UndecodableFrame)
    assert bad.seq == 2 and bad.raw == event(2, b'"\xff\xfe"') and "UTF-8" in bad.error
    for data in (b"1" * 5000, b"1e999999", b"[" * 3000 + b"]" * 3000):
        [frame] = decode_frames(event(4, data))
        assert isinstance(frame, UndecodableFrame) and frame.seq == 4
    [frame] = decode_frames(b"\xff not json")
    assert isinstance(frame, UndecodableFrame) and frame.seq is None


# --- HubClient: backoff -------------------------------------------------------------------


WELCOME = b'{"op":"welcome","project":"p","epoch":"e","head":0,"oldest":1,"heartbeat":20}'


@contextlib.asynccontextmanager
async def fake_hub(script: Callable[[], list[bytes]]) -> AsyncIterator[tuple[str, list[int]]]:
    """A WebSocket server sending `script()` on each connection, then closing with 1011."""
    connections: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(len(connections))
        for message in script():
            await ws.send(message, text=True)
        await ws.close(1011, "boom")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", connections


async def test_client_backs_off_when_dropped_right_after_welcome() -> None:
    # Before: every welcome reset the backoff, so this looped forever, as fast as it could.
    async with fake_hub(lambda: [WELCOME]) as (url, connections):
        client = HubClient(url, "p", backoff_initial=0.001, max_attempts=3)
        with pytest.raises(HubClientError, match="gave up after 3 attempts"):
            async with asyncio.timeout(10):
                async for _ in client:
                    pass
        assert len(connections) == 4


async def test_client_backoff_starts_over_after_a_connection_open_for_healthy_after() -> None:
    # healthy_after=0: every welcomed connection counts as healthy, so it never gives up.
    async with fake_hub(lambda: [WELCOME]) as (url, connections):
        client = HubClient(url, "p", backoff_initial=0.001, max_attempts=2, healthy_after=0.0)
        consumer = asyncio.create_task(anext(aiter(client), None))
        await wait_for(lambda: len(connections) >= 6, what="more drops than max_attempts")
        assert not consumer.done()
        await client.close()
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer


async def test_client_backoff_starts_over_after_a_connection_that_delivered() -> None:
    seqs = iter(range(1, 1000))
    async with fake_hub(lambda: [WELCOME, event(next(seqs), b"1")]) as (url, connections):
        client = HubClient(url, "p", backoff_initial=0.001, max_attempts=2)
        received: list[int] = []
        async with asyncio.timeout(10):
            async for frame in client:
                assert isinstance(frame, EventFrame)
                received.append(frame.seq)
                if len(received) == 6:  # more drops than max_attempts: each one made progress
                    break
        await client.close()
        assert received == [1, 2, 3, 4, 5, 6]
        assert len(connections) == 6


# --- settings -----------------------------------------------------------------------------


def test_the_input_rule_settings_come_from_the_environment_and_are_bounded() -> None:
    environ = {
        "HUB_MAX_JSON_DEPTH": "8",
        "HUB_MAX_EVENT_BYTES": "1000",
        "HUB_MAX_TYPE_LENGTH": "40",
    }
    settings = Settings.from_env(environ)
    assert (settings.max_json_depth, settings.max_event_bytes, settings.max_type_length) == (
        8,
        1000,
        40,
    )
    for bad in ({"max_json_depth": 0}, {"max_json_depth": 257}, {"max_type_length": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Settings(**bad)
