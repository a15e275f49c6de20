"""Hostile spellings of the read routes' query parameters (`limit`, `since`, `after`,
`wait`, `epoch`): every one is a 200 or a 400 with the JSON error, never a 500."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hub.errors import BadRequest
from hub.transports.http_api import _parse_limit

from .support import RunningHub

# Digits of every script, signs, exponents, hex, spaces, and very long runs of digits.
_NUMBERISH = st.one_of(
    st.text(alphabet="0123456789+-.eExX _٥५\u00b2\u2460\uff15", max_size=30),
    st.integers(min_value=0, max_value=10**450).map(str),
    st.integers(min_value=4290, max_value=6000).map(lambda n: "9" * n),
)


@settings(max_examples=300, deadline=None, database=None, print_blob=True)
@given(raw=_NUMBERISH)
@example(raw="9" * 5000)
def test_limit_is_a_bounded_integer_or_a_bad_request(raw: str) -> None:
    try:
        limit = _parse_limit(raw, 1000)
    except BadRequest:
        return
    assert 1 <= limit <= 1000


@pytest.mark.parametrize("name", ["limit", "since", "after", "wait"])
async def test_a_5000_digit_number_is_a_400_not_a_500(running_hub: RunningHub, name: str) -> None:
    path = "/v1/projects/p1/snapshot" if name == "after" else "/v1/projects/p1/events"
    async with running_hub.http() as http:
        response = await http.get(f"{path}?{name}={'9' * 5000}")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and name in error["message"]
