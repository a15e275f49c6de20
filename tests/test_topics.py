"""Type patterns: `*` matches any run of characters (dots too, or none); the rest is literal."""

from __future__ import annotations

import pytest

from hub.errors import BadRequest
from hub.wire.patterns import match_stats
from hub.wire.topics import MATCH_ALL, TypeFilter, parse_types_param, validate_pattern


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        # `*` alone matches everything
        ("*", "ingest.job.updated", True),
        ("*", "a.b", True),
        # a trailing star spans any number of segments, or none
        ("agent.*", "agent.run.created", True),
        ("agent.*", "agent.message.appended", True),
        ("agent.*", "agent.x", True),
        ("agent.*", "agent.", True),
        ("agent.*", "agents.run", False),
        ("agent.*", "ingest.agent.run", False),
        ("agent.*", "agent", False),
        # a leading star spans any prefix, dots included
        ("*.failed", "ingest.job.failed", True),
        ("*.failed", "agent.run.failed", True),
        ("*.failed", "a.failed", True),
        ("*.failed", "ingest.job.failed.retry", False),
        ("*.failed", "ingest.jobfailed", False),
        ("*.failed", "failed", False),
        # a star in the middle, matching the empty run too
        ("ingest.*.updated", "ingest.job.updated", True),
        ("ingest.*.updated", "ingest.job.step.updated", True),
        ("ingest.*.updated", "ingest..updated", True),
        ("ingest.*.updated", "ingest.updated", False),
        ("a*b", "ab", True),
        ("a*b", "a.x.b", True),
        ("*job*", "ingest.job.updated", True),
        ("**", "x.y", True),
        # exact types: whole-string match only
        ("workflow.node_state.updated", "workflow.node_state.updated", True),
        ("workflow.node_state.updated", "workflow.node_state.updated2", False),
        ("workflow.node_state.updated", "x.workflow.node_state.updated", False),
        ("workflow.node_state", "workflow.node_state.updated", False),
        # dots are literal, never "any character"
        ("agent.run", "agentxrun", False),
        ("a.b.c", "a_b_c", False),
    ],
)
def test_pattern_semantics(pattern: str, event_type: str, expected: bool) -> None:
    assert TypeFilter([pattern]).matches(event_type) is expected


def test_several_patterns_match_their_union() -> None:
    type_filter = TypeFilter(["agent.*", "*.failed"])
    assert type_filter.matches("agent.run.created")
    assert type_filter.matches("ingest.job.failed")
    assert not type_filter.matches("ingest.job.updated")


def test_empty_filter_matches_nothing() -> None:
    type_filter = TypeFilter([])
    assert not type_filter.match_all
    assert not type_filter.matches("agent.run.created")


def test_star_makes_a_match_all_filter() -> None:
    assert TypeFilter(["agent.*", "*"]).match_all
    assert MATCH_ALL.match_all
    assert MATCH_ALL.matches("anything.at.all")
    assert not TypeFilter(["agent.*"]).match_all


def test_filters_with_the_same_pattern_set_are_equal_and_hash_alike() -> None:
    a = TypeFilter(["agent.*", "*.failed", "agent.*"])
    b = TypeFilter(["*.failed", "agent.*"])
    assert a == b
    assert hash(a) == hash(b)
    assert a.patterns == ("*.failed", "agent.*")
    assert a != TypeFilter(["agent.*"])


def test_match_cache_consults_the_patterns_once_per_event_type() -> None:
    type_filter = TypeFilter(["agent.*", "cache_once.*"])  # a set no other test builds
    before = match_stats.checks
    for _ in range(100):
        assert type_filter.matches("agent.run.created")
        assert not type_filter.matches("ingest.job.updated")
    assert match_stats.checks - before <= 2


def test_filters_with_the_same_patterns_share_one_compiled_set() -> None:
    a = TypeFilter(["agent.*", "shared_set.*"])
    b = TypeFilter(["shared_set.*", "agent.*", "agent.*"])
    assert a.matches("agent.x") and b.matches("shared_set.y")
    assert a._compiled is not None and a._compiled is b._compiled


def test_match_cache_stays_correct_past_its_size_limit() -> None:
    type_filter = TypeFilter(["*.failed"])
    for i in range(10_000):
        assert type_filter.matches(f"t{i}.failed")
        assert not type_filter.matches(f"t{i}.ok")
    assert type_filter._compiled is not None
    assert len(type_filter._compiled.verdicts) <= 4096
    assert type_filter.matches("t0.failed")
    assert not type_filter.matches("t0.ok")


@pytest.mark.parametrize(
    "pattern", ["*", "agent.*", "*.failed", "ingest.job.updated", "a_1.*", "x*y", "0.9"]
)
def test_valid_patterns_are_returned_unchanged(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "empty type pattern"),
        ("Agent.*", "invalid type pattern 'Agent.*'"),
        ("agent-run", "invalid type pattern 'agent-run'"),
        ("agent run", "invalid type pattern 'agent run'"),
        ("agent.?", "invalid type pattern 'agent.?'"),
        ("agent,run", "invalid type pattern 'agent,run'"),
        ("ägent", "invalid type pattern 'ägent'"),
    ],
)
def test_invalid_patterns_are_refused_with_a_message(pattern: str, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_pattern(pattern)
    assert info.value.message.startswith(message)


def test_pattern_length_is_bounded() -> None:
    assert validate_pattern("a" * 128) == "a" * 128
    with pytest.raises(BadRequest, match="longer than 128"):
        validate_pattern("a" * 129)
    with pytest.raises(BadRequest, match="longer than 10"):
        validate_pattern("a" * 11, max_length=10)


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_absent_or_blank_types_param_means_everything(raw: str | None) -> None:
    assert parse_types_param(raw, max_patterns=4) == ["*"]


def test_types_param_is_split_on_commas_and_stripped() -> None:
    assert parse_types_param("agent.*, *.failed ,ingest.job.updated", max_patterns=4) == [
        "agent.*",
        "*.failed",
        "ingest.job.updated",
    ]


def test_too_many_patterns_in_types_param_is_refused() -> None:
    assert parse_types_param("a.*,b.*,c.*", max_patterns=3) == ["a.*", "b.*", "c.*"]
    with pytest.raises(BadRequest, match="too many type patterns: 4 > 3"):
        parse_types_param("a.*,b.*,c.*,d.*", max_patterns=3)


def test_types_param_with_an_empty_item_or_bad_pattern_is_refused() -> None:
    with pytest.raises(BadRequest, match="empty type pattern"):
        parse_types_param("agent.*,,x.y", max_patterns=8)
    with pytest.raises(BadRequest, match="invalid type pattern"):
        parse_types_param("agent.*,Bad", max_patterns=8)
    with pytest.raises(BadRequest, match="longer than 5"):
        parse_types_param("abcdef", max_patterns=8, max_length=5)


def test_bad_pattern_error_maps_to_close_4400_and_http_400() -> None:
    with pytest.raises(BadRequest) as info:
        validate_pattern("")
    assert int(info.value.close_code) == 4400
    assert info.value.http_status == 400
