"""Tokens, grants, type filters, the Origin policy and log redaction, without sockets."""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from uvicorn.logging import AccessFormatter

from hub.auth import (
    OPEN,
    GrantedTypeFilter,
    OriginPolicy,
    Principal,
    RedactTokens,
    StarPatterns,
    TokenVerifier,
    key_id,
    mint_token,
    parse_secrets,
)
from hub.cli import build_parser
from hub.cli_exit import run_command
from hub.config import Settings
from hub.errors import Forbidden, Unauthorized
from hub.wire.topics import TypeFilter

SECRET = "current-secret-of-at-least-32-bytes!"
OLD_SECRET = "previous-secret-of-at-least-32-bytes"
OTHER_SECRET = "somebody-elses-secret-32-bytes-long!"


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "alice",
        "exp": int(time.time()) + 600,
        "projects": ["acme-1"],
        "scope": ["subscribe"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned(alg: str, payload: dict[str, Any]) -> str:
    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(payload)}."


def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(token)
    return info.value.message


# --- verification ------------------------------------------------------------------------


def test_a_minted_token_verifies_to_its_grant() -> None:
    token = mint_token(
        SECRET, subject="svc", projects=["acme-*", "p1"], scopes=["subscribe", "publish"]
    )
    principal = TokenVerifier([SECRET]).verify(token)
    assert principal.subject == "svc"
    assert principal.projects == ("acme-*", "p1")
    assert principal.scopes == {"subscribe", "publish"}
    assert principal.types is None
    left = principal.seconds_left()
    assert left is not None and 3590 < left <= 3600


def test_minted_tokens_name_their_key_and_pin_hs256() -> None:
    header = jwt.get_unverified_header(mint_token(SECRET, subject="a", projects=["p"]))
    assert header["alg"] == "HS256"
    assert header["kid"] == key_id(SECRET)
    assert key_id(SECRET) != key_id(OLD_SECRET)


def test_a_token_minted_on_a_clock_running_ahead_is_accepted() -> None:
    token = mint_token(SECRET, subject="a", projects=["p"], now=time.time() + 30)
    assert TokenVerifier([SECRET]).verify(token).subject == "a"


def test_a_token_not_valid_yet_is_refused() -> None:
    token = jwt.encode(claims(nbf=int(time.time()) + 60), SECRET, algorithm="HS256")
    assert "not yet valid" in refused(TokenVerifier([SECRET]), token)


def test_expired_token_is_refused() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 1), SECRET, algorithm="HS256")
    assert refused(TokenVerifier([SECRET]), token) == "token expired"


def test_token_signed_with_another_secret_is_refused() -> None:
    token = jwt.encode(claims(), OTHER_SECRET, algorithm="HS256")
    assert "signature" in refused(TokenVerifier([SECRET]), token)


def test_token_with_edited_claims_is_refused() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    header, _, rest = token.partition(".")
    signature = rest.partition(".")[2]
    forged = f"{header}.{b64(claims(projects=['*']))}.{signature}"
    assert "signature" in refused(TokenVerifier([SECRET]), forged)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(alg: str) -> None:
    assert "algorithm" in refused(TokenVerifier([SECRET]), unsigned(alg, claims()))


def test_other_hmac_algorithm_with_the_right_secret_is_refused() -> None:
    token = jwt.encode(claims(), SECRET + SECRET, algorithm="HS512")
    assert "algorithm 'HS512'" in refused(TokenVerifier([SECRET + SECRET]), token)


def test_asymmetric_algorithm_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), key, algorithm="RS256")
    assert "algorithm 'RS256'" in refused(TokenVerifier([SECRET]), token)


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b.c", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9.e30.", "x" * 10_000],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    refused(TokenVerifier([SECRET]), token)


@pytest.mark.parametrize(
    ("missing_or_bad", "message"),
    [
        ({"exp": None}, "exp"),
        ({"sub": None}, "sub"),
        ({"projects": None}, "projects"),
        ({"scope": None}, "scope"),
        ({"projects": []}, "projects"),
        ({"projects": ["a/b"]}, "projects"),
        ({"projects": "acme-1"}, "projects"),
        ({"sub": ""}, "sub"),
        ({"types": ["Agent.*"]}, "types"),
        ({"types": "agent.*"}, "types"),
    ],
)
def test_tokens_without_the_required_claims_are_refused(
    missing_or_bad: dict[str, Any], message: str
) -> None:
    token = jwt.encode(claims(**missing_or_bad), SECRET, algorithm="HS256")
    assert message in refused(TokenVerifier([SECRET]), token)


def test_rotation_accepts_tokens_of_every_configured_secret() -> None:
    verifier = TokenVerifier([SECRET, OLD_SECRET])
    for secret in (SECRET, OLD_SECRET):
        assert verifier.verify(mint_token(secret, subject="a", projects=["p"])).subject == "a"
        # without kid, each secret is tried
        assert verifier.verify(jwt.encode(claims(), secret, algorithm="HS256")).subject == "alice"
    # once the old secret is dropped, its tokens stop working
    assert "unknown key" in refused(
        TokenVerifier([SECRET]), mint_token(OLD_SECRET, subject="a", projects=["p"])
    )


def test_kid_selects_the_secret_and_a_wrong_kid_fails() -> None:
    verifier = TokenVerifier([SECRET, OLD_SECRET])
    mislabeled = jwt.encode(
        claims(), OLD_SECRET, algorithm="HS256", headers={"kid": key_id(SECRET)}
    )
    assert "signature" in refused(verifier, mislabeled)
    unknown_kid = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "k0"})
    assert "unknown key" in refused(verifier, unknown_kid)
    odd_kid = f"{b64({'alg': 'HS256', 'kid': 7})}.{b64(claims())}.c2ln"
    refused(verifier, odd_kid)


def test_scope_may_be_an_oauth_style_string_and_unknown_scopes_grant_nothing() -> None:
    verifier = TokenVerifier([SECRET])
    token = jwt.encode(claims(scope="subscribe publish admin"), SECRET, algorithm="HS256")
    assert verifier.verify(token).scopes == {"subscribe", "publish"}
    token = jwt.encode(claims(scope=["admin"]), SECRET, algorithm="HS256")
    principal = verifier.verify(token)
    with pytest.raises(Forbidden):
        principal.check("acme-1", "subscribe")


def test_secrets_shorter_than_32_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        parse_secrets("short")
    with pytest.raises(ValueError, match="32 bytes"):
        parse_secrets(f"{SECRET},short")
    assert parse_secrets(f" {SECRET} , {OLD_SECRET} ,") == [SECRET, OLD_SECRET]
    assert parse_secrets("") == []


def test_settings_repr_never_shows_the_secret() -> None:
    settings = Settings(secret=SECRET)
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert "max_connections=15000" in repr(settings)


# --- grants ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "project", "granted"),
    [
        (["acme-*"], "acme-1", True),
        (["acme-*"], "acme-", True),
        (["acme-*"], "acme", False),
        (["acme-*"], "xacme-1", False),
        (["acme-*"], "ACME-1", False),
        (["acme.*"], "acmex1", False),  # '.' is literal, not any character
        (["a*c"], "abbbc", True),
        (["a*c"], "abbbcd", False),
        (["p1"], "p1", True),
        (["p1"], "p10", False),
        (["p1", "q*"], "q7", True),
        (["*"], "anything-at-all", True),
    ],
)
def test_project_patterns_use_star_only_semantics(
    patterns: list[str], project: str, granted: bool
) -> None:
    assert StarPatterns(patterns).matches(project) is granted
    principal = Principal("a", patterns, ["subscribe"])
    if granted:
        principal.check(project, "subscribe")
    else:
        with pytest.raises(Forbidden, match="does not grant project"):
            principal.check(project, "subscribe")


def test_scope_is_checked_per_permission() -> None:
    reader = Principal("a", ["p"], ["subscribe"])
    reader.check("p", "subscribe")
    with pytest.raises(Forbidden, match="'publish' scope"):
        reader.check("p", "publish")
    publisher = Principal("a", ["p"], ["publish"])
    with pytest.raises(Forbidden, match="'subscribe' scope"):
        publisher.check("p", "subscribe")


def test_an_open_hub_grants_everything() -> None:
    OPEN.check("any-project", "publish")
    OPEN.check("other", "subscribe")
    assert OPEN.subject is None and OPEN.seconds_left() is None
    assert type(OPEN.type_filter(["agent.*"])) is TypeFilter


# --- type filters ------------------------------------------------------------------------

TYPES = [
    "agent.run.created",
    "agent.step.updated",
    "agent.run.failed",
    "ingest.job.failed",
    "workflow.run.updated",
]


@pytest.mark.parametrize(
    ("requested", "granted", "expected"),
    [
        (["*"], ["agent.*"], ["agent.run.created", "agent.step.updated", "agent.run.failed"]),
        (["*.failed"], ["agent.*"], ["agent.run.failed"]),
        (["ingest.*"], ["agent.*"], []),
        (
            ["agent.run.*", "workflow.*"],
            ["agent.*", "workflow.run.updated"],
            ["agent.run.created", "agent.run.failed", "workflow.run.updated"],
        ),
        (["*"], [], []),
    ],
)
def test_the_types_claim_intersects_the_requested_patterns(
    requested: list[str], granted: list[str], expected: list[str]
) -> None:
    principal = Principal("a", ["p"], ["subscribe"], types=granted)
    type_filter = principal.type_filter(requested)
    assert isinstance(type_filter, TypeFilter)
    assert not type_filter.match_all
    assert [t for t in TYPES if type_filter.matches(t)] == expected
    # asked twice (cached), same answer
    assert [t for t in TYPES if type_filter.matches(t)] == expected


def test_a_types_claim_of_star_is_no_restriction() -> None:
    principal = Principal("a", ["p"], ["subscribe"], types=["*"])
    type_filter = principal.type_filter(["*"])
    assert type(type_filter) is TypeFilter and type_filter.match_all


def test_granted_filters_group_by_both_pattern_sets() -> None:
    agents = TypeFilter(["agent.*"])
    a = GrantedTypeFilter(["*"], agents)
    b = GrantedTypeFilter(["*"], TypeFilter(["agent.*"]))
    c = GrantedTypeFilter(["*"], TypeFilter(["ingest.*"]))
    plain = TypeFilter(["*"])
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert a != plain and plain != a  # the subclass decides both ways
    groups = {plain: "plain", a: "agents", c: "ingest"}
    assert groups[b] == "agents"
    assert groups[TypeFilter(["*"])] == "plain"
    assert a.patterns == ("*",)


# --- Origin policy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "hub.example.com", True),  # not a browser page
        ("https://hub.example.com", "hub.example.com", True),
        ("http://hub.example.com", "hub.example.com", True),
        ("https://hub.example.com", "hub.example.com:443", True),
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("http://[::1]:8080", "[::1]:8080", True),
        ("HTTP://Hub.Example.COM", "hub.example.com", True),
        ("https://evil.example", "hub.example.com", False),
        ("https://hub.example.com.evil.example", "hub.example.com", False),
        ("http://127.0.0.1:9999", "127.0.0.1:8080", False),
        ("https://hub.example.com:8443", "hub.example.com", False),
        ("null", "hub.example.com", False),
        ("file://", "hub.example.com", False),
        ("https://hub.example.com", None, False),
        ("http://127.0.0.1:notaport", "127.0.0.1:8080", False),
    ],
)
def test_default_origin_policy_is_same_host(
    origin: str | None, host: str | None, allowed: bool
) -> None:
    assert OriginPolicy("").allows(origin, host) is allowed


def test_an_allowlist_replaces_the_same_host_default() -> None:
    policy = OriginPolicy("https://app.example.com, https://*.tenant.example.com/")
    assert policy.allows("https://app.example.com", "hub.internal")
    assert policy.allows("https://a.tenant.example.com", "hub.internal")
    assert not policy.allows("https://tenant.example.com", "hub.internal")
    assert not policy.allows("https://hub.internal", "hub.internal")
    assert policy.allows(None, "hub.internal")
    assert OriginPolicy("*").allows("https://anywhere.example", "hub.internal")


# --- logs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "args"),
    [
        ('%s - "WebSocket %s" [accepted]', ("1.2.3.4:5", "/v1/projects/p/ws?token=SECRETTOKEN")),
        ("path %s", ("/x?since=3&token=SECRETTOKEN&types=a.*",)),
        ("header Authorization: Bearer SECRETTOKEN", ()),
    ],
)
def test_log_records_lose_their_tokens(message: str, args: tuple[object, ...]) -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, message, args, None)
    assert RedactTokens().filter(record)
    text = record.getMessage()
    assert "SECRETTOKEN" not in text
    assert "[redacted]" in text


def test_redacted_access_log_records_still_format() -> None:
    # uvicorn's access formatter unpacks the record's arguments itself
    args = ("1.2.3.4:5", "GET", "/v1/projects/p/events?token=SECRETTOKEN", "1.1", 200)
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None
    )
    assert RedactTokens().filter(record)
    text = AccessFormatter("%(client_addr)s %(request_line)s %(status_code)s").format(record)
    assert text == "1.2.3.4:5 GET /v1/projects/p/events?token=[redacted] HTTP/1.1 200 OK"


def test_headers_in_debug_records_lose_their_tokens() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.DEBUG,
        __file__,
        1,
        "< %s: %s",
        ("authorization", "Bearer x.y.z"),
        None,
    )
    RedactTokens().filter(record)
    assert record.getMessage() == "< authorization: Bearer [redacted]"
    mapping = logging.LogRecord("x", logging.INFO, __file__, 1, "%(p)s", None, None)
    mapping.args = {"p": "/ws?since=1&token=abc"}
    RedactTokens().filter(mapping)
    assert mapping.getMessage() == "/ws?since=1&token=[redacted]"


# --- hub token, hub serve --secret --------------------------------------------------------


def hub_main(argv: list[str]) -> None:
    """Run a `hub` subcommand without `main`'s logging setup (it would replace pytest's)."""
    args = build_parser().parse_args(argv)
    status = run_command(args.func, args, prog=f"hub {args.command}", debug=False)
    if status:
        raise SystemExit(status)


def test_hub_token_mints_a_token_the_hub_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    hub_main(
        [
            "token",
            "--secret",
            SECRET,
            "--project",
            "acme-*",
            "--project",
            "p1,p2",
            "--scope",
            "subscribe,publish",
            "--ttl",
            "120",
            "--sub",
            "ci",
            "--types",
            "agent.*",
        ]
    )
    token = capsys.readouterr().out.strip()
    principal = TokenVerifier([SECRET]).verify(token)
    assert principal.subject == "ci"
    assert principal.projects == ("acme-*", "p1", "p2")
    assert principal.scopes == {"subscribe", "publish"}
    assert principal.types == ("agent.*",)
    left = principal.seconds_left()
    assert left is not None and 100 < left <= 120


def test_hub_token_signs_with_the_first_secret_of_hub_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_SECRET", f"{SECRET},{OLD_SECRET}")
    hub_main(["token", "--project", "p"])
    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token)["kid"] == key_id(SECRET)
    assert TokenVerifier([SECRET]).verify(token).scopes == {"subscribe"}


def test_hub_token_generates_secrets_long_enough(capsys: pytest.CaptureFixture[str]) -> None:
    hub_main(["token", "--generate-secret"])
    secret = capsys.readouterr().out.strip()
    assert parse_secrets(secret) == [secret]


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "--secret", "short", "--project", "p"],
        ["token", "--secret", SECRET],
        ["token", "--secret", SECRET, "--project", "p", "--scope", "admin"],
    ],
)
def test_hub_token_refuses_bad_arguments(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HUB_SECRET", raising=False)
    with pytest.raises(SystemExit) as info:
        hub_main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("hub token: ")


def test_hub_serve_refuses_a_short_secret_before_listening(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HUB_SECRET", raising=False)
    with pytest.raises(SystemExit) as info:
        hub_main(["serve", "--port", "0", "--secret", "short"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("hub serve: a secret must be at least 32 bytes")
    assert "short" not in err.replace("a secret must", "")


def test_hub_serve_takes_secret_and_origins_from_flags_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hub.cli import settings_from_args

    monkeypatch.setenv("HUB_SECRET", OLD_SECRET)
    args = build_parser().parse_args(["serve", "--allowed-origins", "https://a.example"])
    settings = settings_from_args(args)
    assert (settings.secret, settings.allowed_origins) == (OLD_SECRET, "https://a.example")
    args = build_parser().parse_args(["serve", "--secret", SECRET])
    assert settings_from_args(args).secret == SECRET
