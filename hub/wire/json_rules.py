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
from functools import cache, partial
from itertools import accumulate, compress
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
_SIMPLE_TOKENS: Final = (
    rb'(?P<str>"[^"\\]*+(?:\\.[^"\\]*+)*+")|(?P<quote>")'
    rb"|(?P<num>-?\d++(?:\.\d*+)?(?:[eE][+-]?\d++)?)|(?P<punct>[\[\]{},])"
)
_TOKEN: Final = re.compile(_SIMPLE_TOKENS, re.S)
# A surrogate pair, a lone surrogate, or any other escape (so `\\ud800` is not one).
_ESCAPE: Final = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|(?P<lone>\\u[dD][89a-fA-F][0-9a-fA-F]{2})|\\.",
    re.S,
)
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")
# Numbers that might break a rule: an integer part of 17+ digits, or of 16 starting with 9
# (2**53 = 9007199254740992), or an exponent of 3+ digits (only those reach infinity).
# Valid JSON rarely holds either (microsecond timestamps have 16 digits and start with 1).
# Found with bytes.translate and substring searches: a regular expression is 30 times slower.
_DIGITS_AS_ZERO: Final = bytes.maketrans(b"123456789E", b"000000000e")
_SIXTEEN_DIGITS: Final = b"0" * 16
_LONG_EXPONENTS: Final = (b"e000", b"e+000", b"e-000")
_FRACTION: Final = re.compile(rb"\.0++")
_SIXTEEN_FROM_NINE: Final = re.compile(rb"(?<![0-9.])9[0-9]{15}")
_SAFE_DIGITS: Final = len(str(MAX_SAFE_INTEGER))
_NAME: Final = re.compile(rb"[A-Za-z_][A-Za-z0-9_]{0,39}")
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_MASK: Final = bytes(1 if b in b"[]{}" else 0 for b in range(256))
# The scan traces a JSON path through this many bytes (5-15 ms); past them a violation is
# found by C-speed searches and named by its byte offset, so a hostile 1 MiB body costs
# about what parsing it costs, not a Python step per token.
_TRACE_BYTES: Final = 32 * 1024
# Where a suspect number shows (simple alternatives: the engine skips ahead fast), and the
# whole number around it.
_SUSPECT_DIGITS: Final = re.compile(rb"[0-9]{16}|[eE][+-]?[0-9]{3}")
_NUMBER: Final = re.compile(rb"-?[0-9]++(?:\.[0-9]*+)?(?:[eE][+-]?[0-9]++)?")
_NUMBER_CHARS: Final = b"0123456789.eE+-"
_DEPTH_STEP: Final = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


class JsonRuleError(ValueError):
    """JSON that breaks an input rule; `message` ends with the bad field's JSON path, or with
    its byte offset when it lies past the first 32 KiB of a text."""

    def __init__(self, reason: str, path: str, offset: int | None = None) -> None:
        self.reason = reason
        self.path = path
        self.offset = offset  # set instead of a full path when the input was too big to trace
        where = f"`{path}`" if offset is None else f"byte {offset} of `{path}`"
        self.message = f"{reason} - at {where}"
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
    stripped = cache(partial(_Stripped, raw))  # computed once, if at all
    if _suspicious(raw, max_depth + envelope, stripped):
        _scan(raw, max_depth, envelope, path, stripped)


class _Stripped:
    """A JSON text with every string emptied to `""`: numbers and brackets are all that is left."""

    __slots__ = ("bare", "strings")

    def __init__(self, raw: bytes) -> None:
        self.bare, self.strings = _without_strings(raw)

    def raw_offset(self, in_bare: int) -> int:
        before = self.bare.count(b'""', 0, in_bare)
        return in_bare + sum(map(len, self.strings[:before]))


def _suspicious(raw: bytes, max_depth: int, stripped: Callable[[], _Stripped]) -> bool:
    if _bad_text(raw):
        return True
    deep = raw.count(b"[") + raw.count(b"{") > max_depth
    if not deep and not _suspect_numbers(raw):
        return False
    bare = stripped().bare  # hex ids and brackets inside strings are no suspects
    if _suspect_numbers(bare):
        return True
    brackets = bare.translate(None, _NOT_BRACKETS)
    return max_depth + 1 in accumulate(map(_DEPTH_STEP.__getitem__, brackets))  # steps of 1


def _without_strings(raw: bytes) -> tuple[bytes, list[bytes]]:
    """`raw` with every string emptied to `""`, and the strings' contents, in order."""
    if b'\\"' not in raw:  # no escaped quote: every quote opens or closes a string
        parts = raw.split(b'"')
        return b'""'.join(parts[::2]), parts[1::2]
    strings = [s[1:-1] for s in _STRING.findall(raw)]
    return _STRING.sub(b'""', raw), strings


def _suspect_numbers(raw: bytes) -> bool:
    shapes = raw.translate(_DIGITS_AS_ZERO)
    if any(exponent in shapes for exponent in _LONG_EXPONENTS):
        return True
    if _SIXTEEN_DIGITS not in shapes:
        return False
    integers = _FRACTION.sub(b".", shapes)
    if _SIXTEEN_DIGITS + b"0" in integers:
        return True
    return _SIXTEEN_DIGITS in integers and _SIXTEEN_FROM_NINE.search(raw) is not None


def _bad_text(raw: bytes) -> bool:
    """Invalid UTF-8 or a lone surrogate escape somewhere in `raw`."""
    if not raw.isascii():
        try:
            raw.decode()
        except UnicodeDecodeError:
            return True
    if b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) is not None:
        return any(escape.lastgroup == "lone" for escape in _ESCAPE.finditer(raw))
    return False


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


def _scan(
    raw: bytes, max_depth: int, envelope: int, path: str, stripped: Callable[[], _Stripped]
) -> None:
    stack: list[_Level] = []

    def where() -> str:
        return path + "".join(level.segment() for level in stack)

    for match in _TOKEN.finditer(raw):
        if match.start() > _TRACE_BYTES:
            _locate(
                raw, match.start(), len(stack), max_depth + envelope, max_depth, path, stripped()
            )
            return
        if not _step(match, stack, max_depth, envelope, where):
            return


def _locate(
    raw: bytes, start: int, depth: int, limit: int, max_depth: int, path: str, text: _Stripped
) -> None:
    """Find a violation in `raw[start:]` (`depth` levels open there) without tracing a path."""
    rest = raw[start:]
    try:
        rest.decode()
    except UnicodeDecodeError as exc:
        raise JsonRuleError("invalid UTF-8", path, start + exc.start) from None
    if b"\\u" in rest:
        for escape in _ESCAPE.finditer(rest):
            if escape.lastgroup == "lone":
                reason = f"lone UTF-16 surrogate {escape.group().decode()} in a string"
                raise JsonRuleError(reason, path, start + escape.start())
    bare = text.bare
    begin = start - sum(map(len, text.strings[: len(_STRING.findall(raw, 0, start))]))
    if _suspect_numbers(bare[begin:]):
        pos = begin
        while (suspect := _SUSPECT_DIGITS.search(bare, pos)) is not None:
            number = _NUMBER.match(bare, _number_start(bare, suspect.start()))
            if number is None:  # not a number after all (malformed): the decoder says so
                pos = suspect.end()
                continue
            at = partial(text.raw_offset, number.start())
            _check_number(number.group(), lambda: path, at)
            pos = max(number.end(), suspect.end())
    brackets = bare[begin:].translate(None, _NOT_BRACKETS)
    # Depth moves by one per bracket: deeper than the limit means reaching limit + 1.
    if limit + 1 in accumulate(map(_DEPTH_STEP.__getitem__, brackets), initial=depth):
        depths = list(accumulate(map(_DEPTH_STEP.__getitem__, brackets), initial=depth))
        first = depths.index(limit + 1) - 1  # `initial` comes first
        mask = bare[begin:].translate(_BRACKET_MASK)
        position = list(compress(range(begin, len(bare)), mask))[first]
        reason = f"nested deeper than {max_depth} levels"
        raise JsonRuleError(reason, path, text.raw_offset(position))


def _number_start(text: bytes, position: int) -> int:
    """Where the number holding `position` starts (looking back as far as it takes)."""
    size = 64
    while True:
        window = text[max(0, position - size) : position]
        inside = len(window) - len(window.rstrip(_NUMBER_CHARS))
        if inside < len(window) or size >= position:
            return position - inside
        size *= 4


def _step(
    match: re.Match[bytes],
    stack: list[_Level],
    max_depth: int,
    envelope: int,
    where: Callable[[], str],
) -> bool:
    """Take one token; False when the input is malformed (the decoder will say so)."""
    kind = match.lastgroup
    if kind == "str":
        token = match.group()
        if stack and stack[-1].expect_key:
            stack[-1].key = token[1:-1]
            stack[-1].expect_key = False
        _check_string(token, where)
    elif kind == "num":
        token = match.group()
        if len(token) >= _SAFE_DIGITS or b"e" in token or b"E" in token:  # else it is fine
            _check_number(token, where)
    elif kind == "quote":
        return False  # an unterminated string
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
            return False  # a close with nothing open
        else:
            stack.pop()
    return True


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


def _check_number(
    token: bytes, where: Callable[[], str], offset: Callable[[], int | None] = lambda: None
) -> None:
    if b"." in token or b"e" in token or b"E" in token:
        if not math.isfinite(float(token)):
            reason = f"number {_clip(token)} is out of range (not finite)"
            raise JsonRuleError(reason, where(), offset())
        return
    digits = token.lstrip(b"-")
    if len(digits) > _SAFE_DIGITS or int(digits) > MAX_SAFE_INTEGER:
        raise JsonRuleError(
            f"integer {_clip(token)} is outside JavaScript's exact range "
            "(|n| <= 2**53-1): send it as a string",
            where(),
            offset(),
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
