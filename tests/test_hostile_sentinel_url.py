"""Hostile Sentinel URLs (hub.backends.redis_connect): any string parses to what it says or
is a ValueError naming the rule; digits of other scripts, %-escapes that are not UTF-8 and a
parameter given twice are refused instead of being read as something else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.backends.redis_connect import SENTINEL_SCHEME, parse_sentinel_url

_PIECES = st.sampled_from(
    [*"ab19:@/,[]?&=%.-_ ", "\u0661", "\u00b2", "::1", "%zz", "%ff", "%c3%a9", "db=", "\x00"]
)


@settings(max_examples=2000, deadline=None, database=None, print_blob=True)
@given(st.lists(_PIECES, max_size=30).map(lambda pieces: SENTINEL_SCHEME + "".join(pieces)))
def test_any_url_parses_to_ascii_numbers_or_is_a_value_error(url: str) -> None:
    try:
        parsed = parse_sentinel_url(url)
    except ValueError as exc:
        assert "bad Sentinel URL" in str(exc)
        return
    assert all(1 <= port <= 65535 for _, port in parsed.sentinels)
    for text in (parsed.password, parsed.username, parsed.sentinel_password):
        assert text is None or "\ufffd" not in text
    assert str(parsed.db).isascii() and 0 <= parsed.db <= 99999


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("redis+sentinel://h:\u0661\u0662/s", "bad port"),
        ("redis+sentinel://[::1]:\u0661/s", "bad port"),
        ("redis+sentinel://h/s?db=\u0661", "db must be a number"),
        ("redis+sentinel://u:%ff@h/s", "not UTF-8"),
        ("redis+sentinel://h/s?sentinel_password=%ff", "not UTF-8"),
        ("redis+sentinel://h/s?db=1&db=2", "given twice"),
    ],
)
def test_lookalike_values_are_refused(url: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        parse_sentinel_url(url)


def test_a_utf8_password_still_parses() -> None:
    assert parse_sentinel_url("redis+sentinel://u:%c3%a9@h/s").password == "\u00e9"
