"""Generated hostile query strings on the read routes of a real hub (history, long poll,
snapshot, SSE): whatever the spelling of `since`, `epoch`, `wait`, `limit`, `after`,
`types`, `keys` and `named` (signs, exponents, hex, other scripts' digits, NaN, 400-digit
numbers, %-escapes of NUL and of invalid UTF-8, 10,000-character values, repeats), the
answer is 200 or a 400 with the JSON error, never a 500 or a hang.

The hub runs on its own event loop in a thread, so hypothesis drives a plain sync client;
hypothesis prints the failing example (and `print_blob` its replay blob)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.config import Settings
from hub.core import Hub

from .support import hub_in_thread

SETTINGS = Settings(long_poll_max_wait_s=0.2)


@pytest.fixture(scope="module")
def hub_url() -> Iterator[str]:
    async def seed(hub: Hub) -> None:
        for i in range(20):
            await hub.publish("p1", "a.b", {"i": i}, key=f"job/{i % 3}")

    with hub_in_thread(SETTINGS, seed) as url:
        yield url


_NUMBERISH = st.one_of(
    st.sampled_from(
        ["1e3", "0x10", "+5", "5 ", " 5", "-1", "NaN", "inf", "0.0", ".5", "5.", "1_0", "0"]
    ),
    st.text(alphabet="0123456789+-.eExX _\u0665\u096b\u00b2\uff15", max_size=12),
    st.integers(min_value=0, max_value=10**400).map(str),
    # Around int()'s 4,300-digit limit (a ValueError, not a number, past it).
    st.integers(min_value=4200, max_value=6000).map(lambda n: "9" * n),
    st.integers(min_value=4200, max_value=6000).map(lambda n: "1" + "0" * n),
)
_ESCAPES = st.sampled_from(["%00", "%ff", "%c3", "%ed%a0%80", "%2c", "%2a", "%", "%zz", "+"])
_TEXTISH = st.one_of(
    st.lists(st.one_of(_ESCAPES, st.sampled_from(["job/1", "*", ",", "a.*", "j"])), max_size=8).map(
        "".join
    ),
    st.sampled_from(["a" * 10_000, "*" * 256, ",".join(["*" * 256] * 32), "x," * 40]),
)
_PARAMS = {
    "since": _NUMBERISH,
    "limit": _NUMBERISH,
    "after": _NUMBERISH,
    "wait": _NUMBERISH,
    "epoch": st.one_of(_TEXTISH, st.text(max_size=70).map(quote)),
    "types": _TEXTISH,
    "keys": _TEXTISH,
    "named": st.one_of(st.sampled_from(["0", "1", "TRUE", "False", "", "yes"]), _TEXTISH),
}


def _encode(value: str) -> str:
    """Numbers and plain text %-encoded; values holding escapes already are sent raw."""
    return value if "%" in value or "+" in value else quote(value, safe="*,/")


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(["events", "snapshot", "sse"]),
    params=st.lists(st.tuples(st.sampled_from(sorted(_PARAMS)), st.data()), min_size=1, max_size=3),
)
def test_hostile_query_strings_get_200_or_a_json_400(
    hub_url: str, route: str, params: list[tuple[str, st.DataObject]]
) -> None:
    query = "&".join(f"{name}={_encode(data.draw(_PARAMS[name]))}" for name, data in params)
    url = f"{hub_url}/v1/projects/p1/{route}?{query}"
    with httpx.Client(timeout=10) as http, http.stream("GET", url) as response:
        status = response.status_code
        if status == 200 and route == "sse":
            return  # the stream opened: the parameters were taken
        body = response.read()
    assert status in (200, 400, 414, 431), (status, body[:300])
    if status == 400:
        error = httpx.Response(400, content=body).json()["error"]
        assert error["code"] == "bad_request" and error["message"] and not error["retryable"]
