"""The input rules: what JSON the hub accepts, so that every client can decode what it sends.

The hub stores and forwards event data as the publisher's own bytes, so anything it accepts
reaches browsers, stdlib `json` and msgspec alike. Accepted JSON is valid UTF-8 with no lone
surrogate (escaped ones included), numbers are finite, integers lie within what JavaScript
represents exactly (|n| <= 2**53 - 1; larger ones must be sent as strings), and nesting is
bounded. `check_json` checks encoded bytes with a scanner and an explicit stack, before any
decoder sees them: msgspec and stdlib json recurse, and deep input raises RecursionError.
docs/security.md, "Input rules", is the contract.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any, Final

import msgspec

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "JsonRuleError",
    "check_json",
    "encode_value",
]

MAX_SAFE_INTEGER: Final = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER
DEFAULT_MAX_DEPTH: Final = 64  # Settings.max_json_depth's default

_STRING: Final = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.S)
_TOKEN: Final = re.compile(
    rb'(?P<str>"[^"\\]*+(?:\\.[^"\\]*+)*+")|(?P<quote>")'
    rb"|(?P<num>-?\d++(?:\.\d*+)?(?:[eE][+-]?\d++)?)|(?P<punct>[\[\]{},])",
    re.S,
)
# A surrogate pair, a lone surrogate, or any other escape (so `\\ud800` is not one).
_ESCAPE: Final = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|(?P<lone>\\u[dD][89a-fA-F][0-9a-fA-F]{2})|\\.",
    re.S,
)
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")
# Numbers that might break a rule: an integer part of 16+ digits (2**53 has 16), or an
# exponent of 100 or more (only those reach infinity). Valid JSON rarely holds either.
_SUSPECT_NUMBER: Final = re.compile(rb"(?<![.\d])\d{16}|[eE][+-]?0*[1-9]\d{2}")
_SAFE_DIGITS: Final = len(str(MAX_SAFE_INTEGER))
_NAME: Final = re.compile(rb"[A-Za-z_][A-Za-z0-9_]{0,39}")
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP: Final = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


class JsonRuleError(ValueError):
    """JSON that breaks an input rule; `message` ends with the bad field's path."""

    def __init__(self, reason: str, path: str) -> None:
        self.reason = reason
        self.path = path
        self.message = f"{reason} - at `{path}`"
        super().__init__(self.message)


def check_json(
    data: bytes | str | msgspec.Raw,
    max_depth: int = DEFAULT_MAX_DEPTH,
    path: str = "$",
    *,
    envelope: int = 0,
) -> None:
    """Raise JsonRuleError if `data` breaks an input rule; `path` names where `data` sits.

    `envelope` levels (a publish body's batch array and event object) hold the data and do
    not count against `max_depth`.

    Malformed JSON is left to the decoder (the scan stops at it); what decodes afterwards
    follows the rules. Cheap C-speed checks go first: the scan runs only on suspicion.
    """
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogatepass")
    else:
        raw = data if isinstance(data, bytes) else bytes(data)
    if _suspicious(raw, max_depth + envelope):
        _scan(raw, max_depth, envelope, path)


def _suspicious(raw: bytes, max_depth: int) -> bool:
    if not raw.isascii():
        try:
            raw.decode()
        except UnicodeDecodeError:
            return True
    if b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) is not None:
        if any(escape.lastgroup == "lone" for escape in _ESCAPE.finditer(raw)):
            return True
    deep = raw.count(b"[") + raw.count(b"{") > max_depth
    if not deep and _SUSPECT_NUMBER.search(raw) is None:
        return False
    bare = _STRING.sub(b'""', raw)  # hex ids and brackets inside strings are no suspects
    if _SUSPECT_NUMBER.search(bare) is not None:
        return True
    brackets = bare.translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > max_depth


class _Level:
    """One open container in the scan: where the next value goes."""

    __slots__ = ("expect_key", "index", "is_object", "key")

    def __init__(self, is_object: bool) -> None:
        self.is_object = is_object
        self.expect_key = is_object
        self.index = 0
        self.key = b""

    def segment(self) -> str:
        if not self.is_object:
            return f"[{self.index}]"
        if _NAME.fullmatch(self.key):
            return "." + self.key.decode()
        return "[" + self.key[:40].decode(errors="replace") + "]"


def _scan(raw: bytes, max_depth: int, envelope: int, path: str) -> None:
    stack: list[_Level] = []

    def where() -> str:
        return path + "".join(level.segment() for level in stack)

    for match in _TOKEN.finditer(raw):
        kind = match.lastgroup
        if kind == "str":
            token = match.group()
            if stack and stack[-1].expect_key:
                stack[-1].key = token[1:-1]
                stack[-1].expect_key = False
            _check_string(token, where)
        elif kind == "num":
            _check_number(match.group(), where)
        elif kind == "quote":
            return  # an unterminated string: malformed, the decoder says so
        else:
            token = match.group()
            if token == b",":
                if stack:
                    top = stack[-1]
                    top.index += 1
                    top.expect_key = top.is_object
            elif token in b"[{":
                if len(stack) >= max_depth + envelope:
                    raise JsonRuleError(f"nested deeper than {max_depth} levels", where())
                stack.append(_Level(token == b"{"))
            elif not stack:
                return  # a close with nothing open: malformed
            else:
                stack.pop()


def _check_string(token: bytes, where: Callable[[], str]) -> None:
    try:
        token.decode()
    except UnicodeDecodeError as exc:
        raise JsonRuleError(f"invalid UTF-8 at byte {exc.start - 1} of a string", where()) from None
    if b"\\u" in token:
        for escape in _ESCAPE.finditer(token):
            if escape.lastgroup == "lone":
                raise JsonRuleError(
                    f"lone UTF-16 surrogate {escape.group().decode()} in a string", where()
                )


def _check_number(token: bytes, where: Callable[[], str]) -> None:
    if b"." in token or b"e" in token or b"E" in token:
        if not math.isfinite(float(token)):
            raise JsonRuleError(f"number {_clip(token)} is out of range (not finite)", where())
        return
    digits = token.lstrip(b"-")
    if len(digits) > _SAFE_DIGITS or int(digits) > MAX_SAFE_INTEGER:
        raise JsonRuleError(
            f"integer {_clip(token)} is outside JavaScript's exact range "
            "(|n| <= 2**53-1): send it as a string",
            where(),
        )


def _clip(token: bytes) -> str:
    text = token.decode()
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} characters)"


# --- in-process values -------------------------------------------------------------------

_encoder: Final = msgspec.json.Encoder()


def encode_value(value: Any, max_depth: int = DEFAULT_MAX_DEPTH, path: str = "$") -> bytes:
    """Encode an in-process value (a Struct, dict, ...) to JSON, refusing what JSON cannot hold.

    msgspec writes NaN and infinities as `null`, and fails on lone surrogates without saying
    where: both are looked for in the value itself (only when the output hints at them).
    Integers and depth are `check_json`'s job, on the bytes.
    """
    try:
        encoded = _encoder.encode(value)
    except RecursionError:
        raise JsonRuleError(f"nested deeper than {max_depth} levels", path) from None
    except UnicodeEncodeError:
        _check_value(value, path)
        raise JsonRuleError("string is not valid Unicode", path) from None
    except (TypeError, msgspec.EncodeError) as exc:
        raise JsonRuleError(f"data is not JSON: {exc}", path) from None
    if b"null" in encoded:
        _check_value(value, path)
    return encoded


def _check_value(value: Any, path: str) -> None:
    """Find a non-finite float or a lone surrogate in a value (an explicit stack, no recursion)."""
    try:
        builtins = msgspec.to_builtins(value)
    except (RecursionError, TypeError, ValueError):
        return  # the encoder's own error says enough
    stack: list[tuple[Any, str]] = [(builtins, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise JsonRuleError(f"number {item} is not finite", where)
        if isinstance(item, str) and not _is_unicode(item):
            raise JsonRuleError("lone UTF-16 surrogate in a string", where)
        if isinstance(item, dict):
            for key, child in item.items():
                segment = f".{key}" if isinstance(key, str) and key.isidentifier() else f"[{key!r}]"
                if isinstance(key, str) and not _is_unicode(key):
                    raise JsonRuleError("lone UTF-16 surrogate in a key", where)
                stack.append((child, where + segment))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
