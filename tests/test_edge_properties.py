"""Property tests for the edge rules: whatever spelling carries a token in a query, the log
loses its value; whatever `Host` a request carries, an open hub on loopback takes only
loopback names."""

from __future__ import annotations

import ipaddress
from urllib.parse import quote, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.auth.origins import HostPolicy, OriginPolicy
from hub.auth.redaction import redact

PURE = settings(max_examples=400, deadline=None, database=None)

SECRET_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-."


@st.composite
def spelled_name(draw: st.DrawFn) -> str:
    """`token` or `access_token`, each character in random case, some percent-encoded (once
    or twice)."""
    name = draw(st.sampled_from(["token", "access_token", "id_token"]))
    out = []
    for char in name:
        char = char.upper() if draw(st.booleans()) else char
        encoding = draw(st.integers(0, 3))
        if encoding == 1:
            char = f"%{ord(char):02X}"
        elif encoding == 2:
            char = f"%{ord(char):02x}"
        elif encoding == 3:
            char = quote(f"%{ord(char):02X}")  # %2574: decodes to %74, then to t
        out.append(char)
    return "".join(out)


@PURE
@given(
    name=spelled_name(),
    value=st.text(SECRET_ALPHABET, min_size=12, max_size=200),
    before=st.lists(st.from_regex(r"[a-z]{1,5}=[0-9]{0,6}", fullmatch=True), max_size=3),
    after=st.lists(st.from_regex(r"[a-z]{1,5}=[0-9]{0,6}", fullmatch=True), max_size=3),
    separator=st.sampled_from(["=", "%3D", "%3d"]),
    frame=st.sampled_from(['"GET {} HTTP/1.1" 200', "WebSocket {} [accepted]", "url={}", "{}"]),
)
def test_a_token_in_any_query_spelling_never_survives(
    name: str, value: str, before: list[str], after: list[str], separator: str, frame: str
) -> None:
    query = "&".join([*before, f"{name}{separator}{value}", *after])
    line = frame.format(f"/v1/projects/p/ws?{query}")
    assert value not in redact(line)


@PURE
@given(st.text(max_size=200))
def test_redaction_never_fails_and_is_stable(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


@PURE
@given(
    st.one_of(
        st.text(max_size=60),
        st.ip_addresses().map(lambda ip: f"[{ip}]" if ip.version == 6 else str(ip)),
        st.from_regex(r"[a-z0-9.-]{1,30}(:[0-9]{1,5})?", fullmatch=True),
    )
)
def test_an_open_hub_on_loopback_takes_only_loopback_host_names(host: str) -> None:
    if not HostPolicy("").allows(host):
        return
    name = (urlsplit("//" + host.strip()).hostname or "").rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return
    assert ipaddress.ip_address(name).is_loopback


@PURE
@given(st.text(max_size=80), st.text(max_size=40))
def test_without_a_list_an_origin_passes_only_for_its_own_host(origin: str, host: str) -> None:
    if OriginPolicy("").allows(origin, host):
        parsed, served = urlsplit(origin.strip().lower()), urlsplit("//" + host.strip().lower())
        assert parsed.hostname == served.hostname
