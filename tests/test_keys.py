"""Key patterns (`keys`): the matcher agrees with a reference on any characters and stays
linear on patterns built to backtrack; parameters and claims are bounded with clear errors;
the fan-out index finds keyed groups by lookup, not by scanning them; the op rules."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.auth import OPEN, Principal, TokenVerifier, mint_token
from hub.config import Settings
from hub.errors import BadRequest, Unauthorized
from hub.fanout.fanout_index import GroupIndex
from hub.fanout.subscriber_session import SubscriberSession
from hub.protocol import ErrorFrame, FrameError, SubscribedFrame, decode_client_frame
from hub.wire.event_filter import EventFilter
from hub.wire.keys import (
    KeyFilter,
    parse_keys_param,
    strict_query_param,
    validate_key_pattern,
)
from hub.wire.patterns import match_stats
from hub.wire.topics import TypeFilter

from .test_patterns import _seconds_per_match

SECRET = "k" * 40


def reference(pattern: str, key: str) -> bool:
    """fnmatch-like by regex: `*` is `.*`, every other character escaped (DOTALL: `*` spans
    newlines too)."""
    body = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(body, key, re.DOTALL) is not None


# Keys look like `ingest.job/j17`; draw from their alphabet plus anything else, `*` often.
key_chars = st.sampled_from("ab/.-_:j1 é,\n")
keys = st.text(alphabet=key_chars, min_size=1, max_size=24)
patterns = st.text(alphabet=st.one_of(key_chars, st.just("*")), min_size=1, max_size=16)
any_keys = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)


@settings(max_examples=400, deadline=None)
@given(patterns, keys)
def test_the_key_matcher_agrees_with_the_reference(pattern: str, key: str) -> None:
    assert KeyFilter([pattern]).matches(key) is reference(pattern, key)


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        alphabet=st.one_of(st.characters(blacklist_categories=("Cs",)), st.just("*")),
        min_size=1,
        max_size=16,
    ),
    any_keys,
)
def test_the_key_matcher_agrees_on_any_unicode(pattern: str, key: str) -> None:
    assert KeyFilter([pattern]).matches(key) is reference(pattern, key)


@settings(max_examples=200, deadline=None)
@given(st.lists(patterns, min_size=1, max_size=8), st.lists(keys, max_size=8))
def test_a_filter_of_several_patterns_matches_their_union(
    held: list[str], values: list[str]
) -> None:
    key_filter = KeyFilter(held)
    for key in values:
        assert key_filter.matches(key) is any(reference(p, key) for p in held)


def test_key_semantics_from_the_contract() -> None:
    f = KeyFilter(["ingest.job/j17", "agent.run/*", "workflow.node/run-42/*"])
    assert f.matches("ingest.job/j17")
    assert not f.matches("ingest.job/j170")  # exact: whole key
    assert not f.matches("ingest.job/j1")
    assert f.matches("agent.run/r1") and f.matches("agent.run/") and f.matches("agent.run/a/b.c")
    assert not f.matches("agent.runs/r1")
    assert f.matches("workflow.node/run-42/n7")
    assert not f.matches("workflow.node/run-421")
    assert not f.matches(None)  # an event without a key never passes a key filter
    assert not KeyFilter(["*"]).matches(None) and KeyFilter(["*"]).matches("x")
    assert not KeyFilter([]).matches("x")  # every key unsubscribed: nothing
    # `.` is literal, `*` matches a literal star as well
    assert not KeyFilter(["a.b"]).matches("axb")
    assert KeyFilter(["a*"]).matches("a*b")


def _hostile_keys(attempt: int) -> list[str]:
    """256-character keys that make a backtracking matcher retry."""
    tails = ("a" * 250, "a" * 249 + "z", "ab" * 124 + "z", "/" * 249 + "z")
    return [f"{attempt}{i}/"[:6].ljust(6, "/") + tails[i % 4] for i in range(400)]


def test_key_patterns_built_to_backtrack_cost_about_what_one_star_costs() -> None:
    baseline = _seconds_per_match(KeyFilter(["*z"]).matches, _hostile_keys)
    for pattern in ("*" * 200 + "z", "*a" * 127 + "*z", "*/" * 127 + "*z", "a*" * 128):
        cost = _seconds_per_match(KeyFilter([pattern, "x/*"]).matches, _hostile_keys)
        assert cost < 1e-3, f"{pattern[:12]}...: {cost * 1e6:.0f} us per match"
        assert cost < 50 * baseline + 20e-6, (pattern[:12], cost, baseline)


# --- parameters, with their bounds ---------------------------------------------------------


def test_the_keys_parameter_parses_and_keeps_the_canonical_spelling() -> None:
    assert parse_keys_param(None, 32) is None
    assert parse_keys_param("ingest.job/j1,agent.run/**", 32) == ["ingest.job/j1", "agent.run/*"]
    assert parse_keys_param(" a b ", 32) == [" a b "]  # nothing trimmed: keys are literal
    assert parse_keys_param("x,x", 32) == ["x"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "empty keys parameter"),
        ("a,,b", "empty key pattern"),
        ("a,", "empty key pattern"),
        ("k" * 257, "longer than 256"),
        (",".join(f"k{i}" for i in range(33)), "too many key patterns: 33 > 32"),
        ("a\ud800b", "lone surrogate"),
    ],
)
def test_bad_keys_parameters_are_refused_clearly(raw: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_keys_param(raw, 32, 256)


def test_a_flood_of_separators_is_refused_before_any_pattern_is_checked() -> None:
    with pytest.raises(BadRequest, match="too many key patterns: 1000001"):
        parse_keys_param("," * 1_000_000, 32)


def test_the_raw_query_is_read_as_strict_utf8() -> None:
    assert strict_query_param(b"types=a.*&keys=ingest.job%2Fj1", "keys", 1000) == "ingest.job/j1"
    assert strict_query_param(b"keys=a+b&keys=c%2Cd", "keys", 1000) == "a b,c,d"
    assert strict_query_param(b"k%65ys=%C3%A9", "keys", 1000) == "é"
    assert strict_query_param(b"types=x", "keys", 1000) is None
    assert strict_query_param(b"keys=", "keys", 1000) == ""
    with pytest.raises(BadRequest, match="not valid UTF-8"):
        strict_query_param(b"keys=j%FF", "keys", 1000)
    with pytest.raises(BadRequest, match="not valid UTF-8"):
        strict_query_param(b"keys=%ED%A0%80", "keys", 1000)  # an encoded surrogate
    with pytest.raises(BadRequest, match="over 10 bytes"):
        strict_query_param(b"keys=" + b"a" * 11, "keys", 10)


def test_validate_key_pattern_collapses_star_runs() -> None:
    assert validate_key_pattern("a/**/b***") == "a/*/b*"
    assert KeyFilter(["a**"]) == KeyFilter(["a*"]) and hash(KeyFilter(["a**"])) == hash(
        KeyFilter(["a*"])
    )


# --- the fan-out index ---------------------------------------------------------------------


def test_a_thousand_exact_key_groups_cost_one_lookup_per_event() -> None:
    index: GroupIndex[int] = GroupIndex()
    everything = TypeFilter(["*"])
    for i in range(1000):
        index.add(i, everything, KeyFilter([f"ingest.job/j{i}"]))
    index.add(-1, TypeFilter(["ingest.*"]))  # an unkeyed group by type, beside them
    before = match_stats.checks
    for n in range(2000):
        found = index.groups_for("ingest.job.updated", f"ingest.job/j{n % 1000}")
        assert found == (-1, n % 1000)
    per_event = (match_stats.checks - before) / 2000
    assert per_event <= 1, per_event  # no pattern compared: a hash lookup found the group
    assert index.groups_for("ingest.job.updated", None) == (-1,)
    assert index.groups_for("ingest.job.updated", "ingest.job/j1000") == (-1,)


def test_only_prefix_and_wildcard_key_patterns_are_compared() -> None:
    index: GroupIndex[str] = GroupIndex()
    for i in range(500):
        index.add(f"run{i}", TypeFilter(["*"]), KeyFilter([f"workflow.node/run-{i}/*"]))
    before = match_stats.checks
    assert index.groups_for("workflow.node.updated", "workflow.node/run-42/n1") == ("run42",)
    assert match_stats.checks - before <= 2  # the one prefix bucket holding `run-42/`


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from(["*", "a.*", "*.b", "a.b"]), min_size=1, max_size=2),
            st.one_of(st.none(), st.lists(patterns, max_size=3)),
            st.one_of(st.none(), st.lists(patterns, min_size=1, max_size=2)),
        ),
        max_size=8,
    ),
    st.lists(st.tuples(st.sampled_from(["a.b", "a.c", "x.b"]), st.one_of(st.none(), keys))),
    st.data(),
)
def test_the_index_agrees_with_asking_every_group(
    groups: list[tuple[list[str], list[str] | None, list[str] | None]],
    events: list[tuple[str, str | None]],
    data: st.DataObject,
) -> None:
    index: GroupIndex[int] = GroupIndex()
    filters: dict[int, EventFilter] = {}
    for i, (types, requested, granted_keys) in enumerate(groups):
        principal = Principal("t", ["*"], ["subscribe"], keys=granted_keys)
        event_filter = EventFilter(principal.type_filter(types), principal.key_filter(requested))
        filters[i] = event_filter
        index.add(i, event_filter.types, event_filter.keys)
    removed = data.draw(st.sets(st.sampled_from(sorted(filters)) if filters else st.nothing()))
    for i in removed:
        index.remove(i, filters[i].types, filters[i].keys)
        del filters[i]

    class Event:
        def __init__(self, type_: str, key: str | None) -> None:
            self.type, self.key = type_, key

    for event_type, key in events:
        found = set(index.groups_for(event_type, key)) | set(index.match_all)
        expected = {i for i, f in filters.items() if f.matches(Event(event_type, key))}
        assert found == expected, (event_type, key)


# --- tokens --------------------------------------------------------------------------------


def test_the_keys_claim_round_trips_and_narrows() -> None:
    token = mint_token(SECRET, subject="u", projects=["p"], keys=["ingest.job/j1*"])
    principal = TokenVerifier([SECRET]).verify(token)
    assert principal.keys == ("ingest.job/j1*",)
    only_granted = principal.key_filter(None)  # asked for every key: the token's keys
    assert only_granted is not None
    assert only_granted.matches("ingest.job/j12") and not only_granted.matches("ingest.job/j2")
    narrowed = principal.key_filter(["ingest.job/*"])  # asked wider: narrowed, not refused
    assert narrowed is not None
    assert narrowed.matches("ingest.job/j1") and not narrowed.matches("ingest.job/j2")
    outside = principal.key_filter(["agent.run/*"])  # nothing in common: receives nothing
    assert outside is not None and not outside.matches("agent.run/r1")
    assert OPEN.key_filter(None) is None and OPEN.keys is None


@pytest.mark.parametrize(
    ("claim", "message"),
    [([""], "empty key pattern"), (["k" * 257], "longer than 256"), ("ingest", "keys")],
)
def test_a_bad_keys_claim_is_refused(claim: object, message: str) -> None:
    import jwt

    token = jwt.encode(
        {"sub": "u", "exp": 2**40, "projects": ["p"], "scope": ["subscribe"], "keys": claim},
        SECRET,
        algorithm="HS256",
    )
    with pytest.raises(Unauthorized, match=message):
        TokenVerifier([SECRET]).verify(token)


# --- subscribe / unsubscribe ops -----------------------------------------------------------


def _session(keys: list[str] | None = None) -> tuple[SubscriberSession, list[object]]:
    applied: list[object] = []
    session = SubscriberSession(
        Settings(max_patterns=3),
        ["*"],
        keys=keys,
        explicit_types=False,
        op_budget=None,
        apply=lambda types, keys: applied.append((types, keys)),
    )
    return session, applied


def test_keys_ops_narrow_then_merge_and_unsubscribing_never_widens() -> None:
    s, applied = _session()
    reply = s.receive('{"op":"subscribe","id":1,"keys":["ingest.job/j1"]}')
    assert reply == SubscribedFrame(1, ["*"], ["ingest.job/j1"])  # types untouched
    reply = s.receive('{"op":"subscribe","keys":["ingest.job/j2","ingest.job/j1"]}')
    assert isinstance(reply, SubscribedFrame) and reply.keys == ["ingest.job/j1", "ingest.job/j2"]
    reply = s.receive('{"op":"subscribe","types":["ingest.*"]}')  # replaces the implicit `*`
    assert reply == SubscribedFrame(None, ["ingest.*"], ["ingest.job/j1", "ingest.job/j2"])
    reply = s.receive('{"op":"unsubscribe","keys":["ingest.job/j1","ingest.job/j2"]}')
    assert reply == SubscribedFrame(None, ["ingest.*"], [])  # an empty key filter: nothing
    assert applied[-1] == (["ingest.*"], [])


def test_bad_keys_in_an_op_are_error_frames_and_change_nothing() -> None:
    s, applied = _session(["a"])
    for frame, message in [
        ('{"op":"subscribe","id":2,"keys":[""]}', "empty key pattern"),
        ('{"op":"subscribe","id":2,"keys":["b","c","d"]}', "too many key patterns: 4 > 3"),
        ('{"op":"subscribe","id":2,"keys":["' + "k" * 257 + '"]}', "longer than 256"),
        ('{"op":"subscribe","id":2,"keys":"a"}', "Expected `array"),
        ('{"op":"subscribe","id":2}', "give `types`, `keys` or both"),
    ]:
        reply = s.receive(frame)
        assert isinstance(reply, ErrorFrame) and reply.id == 2, reply
        assert message in reply.message, reply.message
    assert s.keys == ["a"] and applied == []


def test_an_op_key_may_hold_a_comma_and_the_frame_echoes_keys_only_when_set() -> None:
    op = decode_client_frame('{"op":"subscribe","keys":["a,b"]}')
    assert op.keys == ["a,b"] and op.types is None  # type: ignore[union-attr]
    with pytest.raises(FrameError, match="give `types`, `keys` or both"):
        decode_client_frame('{"op":"unsubscribe"}')
    from hub.protocol import encode

    assert b"keys" not in encode(SubscribedFrame(1, ["*"]))
    assert b'"keys":[]' in encode(SubscribedFrame(1, ["*"], []))


def test_random_keyed_filters_match_like_the_reference(rng: random.Random) -> None:
    # Broad random coverage beside hypothesis, seeded (HUB_TEST_SEED).
    alphabet = "ab/.*"
    for _ in range(2000):
        pattern = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))
        key = "".join(rng.choice(alphabet.replace("*", "")) for _ in range(rng.randint(1, 14)))
        assert KeyFilter([pattern]).matches(key) is reference(pattern, key), (pattern, key)


def test_hub_token_keys_option_mints_the_claim(capsys: pytest.CaptureFixture[str]) -> None:
    from .test_auth_tokens import hub_main

    hub_main(["token", "--secret", SECRET, "--project", "p", "--keys", "ingest.job/*,agent.run/r1"])
    principal = TokenVerifier([SECRET]).verify(capsys.readouterr().out.strip())
    assert principal.keys == ("agent.run/r1", "ingest.job/*")
    hub_main(["token", "--secret", SECRET, "--project", "p"])
    assert TokenVerifier([SECRET]).verify(capsys.readouterr().out.strip()).keys is None
