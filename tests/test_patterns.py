"""The glob matcher: agrees with a reference on star-heavy patterns, costs the same per match
whatever the number of stars, and the fan-out index checks a new type against few patterns."""

from __future__ import annotations

import time
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.auth import GrantedTypeFilter
from hub.fanout.fanout_index import GroupIndex
from hub.wire.patterns import (
    PatternIndex,
    StarPatterns,
    compile_pattern,
    match_stats,
    normalize_pattern,
)
from hub.wire.topics import TypeFilter, validate_pattern


def reference_match(pattern: str, value: str) -> bool:
    """fnmatch-like semantics by dynamic programming: `*` is any run, the rest literal."""
    # row[j]: pattern[:i] matches value[:j]
    row = [True] + [False] * len(value)
    for char in pattern:
        if char == "*":
            for j in range(1, len(value) + 1):
                row[j] = row[j] or row[j - 1]
        else:
            row = [False] + [row[j] and value[j] == char for j in range(len(value))]
    return row[-1]


# Small alphabets make matches likely; stars are drawn often and in runs.
star_heavy = st.text(alphabet=st.sampled_from("ab.**"), max_size=24)
types = st.text(alphabet="ab.", max_size=24)
any_types = st.text(max_size=40)  # any code points: the matcher must not assume the grammar


@settings(max_examples=400, deadline=None)
@given(star_heavy, types)
def test_glob_agrees_with_the_reference(pattern: str, value: str) -> None:
    assert compile_pattern(pattern).matches(value) is reference_match(pattern, value)


@settings(max_examples=200, deadline=None)
@given(star_heavy, any_types)
def test_glob_agrees_with_the_reference_on_arbitrary_text(pattern: str, value: str) -> None:
    assert compile_pattern(pattern).matches(value) is reference_match(pattern, value)


@settings(max_examples=200, deadline=None)
@given(st.lists(star_heavy.filter(bool), max_size=12), st.lists(types, max_size=8))
def test_index_lists_exactly_the_matching_patterns(patterns: list[str], values: list[str]) -> None:
    index = PatternIndex(patterns)
    canonical = {normalize_pattern(p) for p in patterns}
    type_filter = TypeFilter(patterns)
    for value in values:
        expected = {p for p in canonical if reference_match(p, value)}
        assert sorted(index.matching(value)) == sorted(expected)
        assert index.any_match(value) is bool(expected)
        assert type_filter.matches(value) is bool(expected)


@settings(max_examples=100, deadline=None)
@given(st.lists(star_heavy.filter(bool), min_size=1, max_size=10), st.data())
def test_index_forgets_a_pattern_when_its_last_holder_removes_it(
    patterns: list[str], data: st.DataObject
) -> None:
    index = PatternIndex()
    for pattern in patterns:
        index.add(pattern)
    removed = data.draw(st.lists(st.sampled_from(patterns), max_size=len(patterns)))
    held = list(patterns)
    for pattern in removed:
        if pattern in held:
            held.remove(pattern)
            index.remove(pattern)
    assert set(index) == {normalize_pattern(p) for p in held}
    for value in data.draw(st.lists(types, max_size=6)):
        expected = {normalize_pattern(p) for p in held if reference_match(p, value)}
        assert set(index.matching(value)) == expected


def test_runs_of_stars_are_one_star() -> None:
    assert validate_pattern("a**b***") == "a*b*"
    assert validate_pattern("*" * 40 + "z") == "*z"
    assert TypeFilter(["**"]).match_all
    assert TypeFilter(["a**b"]) == TypeFilter(["a*b"])


def _seconds_per_match(match: Callable[[str], bool], values: Callable[[int], list[str]]) -> float:
    """Best of five passes (the machine is shared), per match; each pass has new types, so
    no verdict cache answers for the matcher."""
    best = float("inf")
    for attempt in range(5):
        batch = values(attempt)
        start = time.perf_counter()
        for value in batch:
            match(value)
        best = min(best, (time.perf_counter() - start) / len(batch))
    return best


def _hostile_types(attempt: int) -> list[str]:
    """256-character types that make a backtracking matcher retry: many `a`, with and
    without the final `z`, or `a` and `b` interleaved."""
    tails = ("a" * 250, "a" * 249 + "z", "ab" * 124 + "z", "b" * 249 + "z")
    return [f"{attempt}{i}."[:6].ljust(6, ".") + tails[i % 4] for i in range(400)]


def test_forty_stars_cost_about_what_one_star_costs() -> None:
    forty = "*" * 40 + "z"
    alternating = "*a" * 63 + "*z"  # 128 characters, 64 stars: the worst for backtracking
    baseline = _seconds_per_match(compile_pattern("*z").matches, _hostile_types)
    for pattern in (forty, alternating):
        for match in (
            compile_pattern(pattern).matches,
            PatternIndex([pattern]).any_match,
            TypeFilter([pattern, "x.*"]).matches,  # history, snapshot, SSE, WS, token claims
            StarPatterns([pattern, "acme-*"]).matches,  # token project grants, origins, hosts
        ):
            cost = _seconds_per_match(match, _hostile_types)
            assert cost < 1e-3, f"{pattern[:12]}...: {cost * 1e6:.0f} us per match"
            assert cost < 50 * baseline + 20e-6, (pattern[:12], cost, baseline)


def test_a_new_type_is_checked_against_few_of_the_distinct_patterns() -> None:
    # 1,000 filters of 32 patterns each, of every shape: prefixed, suffixed, floating, exact.
    index: GroupIndex[int] = GroupIndex()
    distinct: set[str] = set()
    for i in range(1000):
        patterns = [
            (f"f{i}.p{j}.*", f"*.f{i}_{j}", f"*.s{i}x{j}.*", f"f{i}.exact{j}")[j % 4]
            for j in range(32)
        ]
        distinct.update(patterns)
        index.add(i, TypeFilter(patterns))
    before = match_stats.checks
    for n in range(1000):
        assert index.groups_for(f"rt.new{n}.updated") == ()
    per_type = (match_stats.checks - before) / 1000
    assert per_type <= len(distinct)  # the bound in the worst case
    assert per_type < 100  # and in practice a few candidates, not 32,000 checks
    assert index.groups_for("f7.p4.created") == (7,)
    assert index.groups_for("a.s9x2.b") == (9,)
    assert set(index.groups_for("f3.exact3")) == {3}


def test_a_cached_type_is_not_matched_again() -> None:
    index: GroupIndex[str] = GroupIndex()
    index.add("g", TypeFilter(["*.cached.*"]))
    assert index.groups_for("a.cached.b") == ("g",)
    before = match_stats.checks
    for _ in range(100):
        assert index.groups_for("a.cached.b") == ("g",)
    assert match_stats.checks == before
    index.remove("g", TypeFilter(["*.cached.*"]))
    assert index.groups_for("a.cached.b") == ()


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.one_of(st.characters(), st.just("*")), max_size=16),
    st.text(max_size=24),
)
def test_glob_agrees_with_the_reference_on_any_characters(pattern: str, value: str) -> None:
    assert compile_pattern(pattern).matches(value) is reference_match(pattern, value)
    assert PatternIndex([pattern]).any_match(value) is reference_match(pattern, value)


def test_a_token_narrowed_filter_takes_only_its_granted_types() -> None:
    index: GroupIndex[str] = GroupIndex()
    index.add("everything-granted", GrantedTypeFilter(["*"], TypeFilter(["agent.*"])))
    index.add("failed-granted", GrantedTypeFilter(["*.failed"], TypeFilter(["agent.*"])))
    index.add("plain", TypeFilter(["*.failed"]))
    assert set(index.groups_for("agent.run.failed")) == {
        "everything-granted",
        "failed-granted",
        "plain",
    }
    assert index.groups_for("agent.run.created") == ("everything-granted",)
    assert index.groups_for("ingest.job.failed") == ("plain",)


@given(st.text("ab*-", max_size=12), st.text("ab-", max_size=16))
@settings(max_examples=300, deadline=None)
def test_star_patterns_agree_with_the_reference(pattern: str, value: str) -> None:
    assert StarPatterns([pattern]).matches(value) == reference_match(pattern, value)
