"""`keys` on snapshot paging (`after` = the previous page's `next`), against a real hub with
tiny pages: whatever the keys, the patterns and the page size, the pages together hold
exactly the snapshot's events whose key matches, each once, in seq order."""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.config import Settings
from hub.core import Hub

from .support import hub_in_thread

KEYS = [f"job/{i}" for i in range(12)] + [f"run-{i}/node/{j}" for i in range(3) for j in range(4)]

SETTINGS = Settings(snapshot_page_bytes=200, heavy_read_bytes=200)


@pytest.fixture(scope="module")
def hub_url() -> Iterator[str]:
    async def seed(hub: Hub) -> None:
        order = random.Random(7)  # fixed: the module's data is the same every run
        for i in range(120):
            await hub.publish("p1", "a.b", {"i": i}, key=order.choice(KEYS))

    with hub_in_thread(SETTINGS, seed) as url:
        yield url


def pages(http: httpx.Client, keys: str | None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    for _ in range(200):
        params = {"after": after} | ({"keys": keys} if keys is not None else {})
        response = http.get("/v1/projects/p1/snapshot", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["events"]
        if not page["more"]:
            return events
        assert page["next"] > after, "a page that does not move on"
        after = page["next"]
    raise AssertionError("snapshot paging did not end")


_PATTERN = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(["job/*", "*", "run-1/*", "*/node/2", "*1*", "run-*/node/*", "nope"]),
)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(patterns=st.lists(_PATTERN, min_size=1, max_size=5))
def test_keyed_snapshot_pages_hold_exactly_the_matching_latest_events(
    hub_url: str, patterns: list[str]
) -> None:
    with httpx.Client(base_url=hub_url, timeout=10) as http:
        everything = pages(http, None)
        keyed = pages(http, ",".join(patterns))
    # `*` is any run of characters, the rest literal: fnmatch without its [] classes.
    expected = [e for e in everything if any(fnmatch.fnmatchcase(e["key"], p) for p in patterns)]
    assert [e["seq"] for e in keyed] == [e["seq"] for e in expected]
    assert len({e["key"] for e in keyed}) == len(keyed), "a key twice"
