"""Tokens never reach the log: every record the process makes is redacted where it is made.

A token travels as `Authorization: Bearer ...` or as a query parameter, and a query may spell
the parameter's name any way the server decodes: `token`, `TOKEN`, `%74oken`, `access_token`,
even `token%3D<value>` (a name holding the value). So the rule works on the decoded query:
in every `?`/`&`/`;`-separated piece of every URL-like word, a piece whose decoded name
contains `token`, `secret`, `passw` or `auth` keeps its name and loses its value. Besides,
`Bearer <x>` and anything shaped like a JWT (`eyJ...`.`...`.`...`) are redacted wherever they
appear. A record factory applies this to the message, its string arguments and its traceback
text, so every logger (uvicorn's, the hub's, asyncio's, a library's) and every handler sees
only redacted records.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any, Final
from urllib.parse import unquote_plus

__all__ = ["REDACTED", "RedactTokens", "install_log_redaction", "redact"]

REDACTED: Final = "[redacted]"

_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER: Final = re.compile(r"(?i)(bearer(?:\s+|%20|\+))[^\s&\"',;]+")
_WORD: Final = re.compile(r"[^\s\"'<>`()\[\]{}]+")  # a URL, a path with its query, `k=v`
_PIECE_SEPARATOR: Final = re.compile(r"([?&;])")
_SENSITIVE_NAME: Final = re.compile(r"token|secret|passw|auth")
_HINTS: Final = ("=", "%", "eyJ", "earer")  # text without any of these has nothing to redact


def _decoded(text: str) -> str:
    """`text` percent-decoded until it stops changing (a few rounds: %2574 is %74 is t)."""
    for _ in range(3):
        decoded = unquote_plus(text)
        if decoded == text:
            break
        text = decoded
    return text


def _redact_piece(piece: str) -> str:
    decoded = _decoded(piece)
    name, equals, _ = decoded.partition("=")
    if not equals or not _SENSITIVE_NAME.search(name.lower()):
        return piece
    raw_name, raw_equals, _ = piece.partition("=")
    return f"{raw_name if raw_equals else name}={REDACTED}"


def _redact_word(match: re.Match[str]) -> str:
    word = match.group(0)
    if "=" not in word and "%" not in word:
        return word
    parts = _PIECE_SEPARATOR.split(word)
    return "".join(p if p in "?&;" else _redact_piece(p) for p in parts)


def redact(text: str) -> str:
    """`text` with every token-bearing value replaced by `[redacted]`."""
    if not any(hint in text for hint in _HINTS):
        return text
    text = _WORD.sub(_redact_word, text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    return _JWT.sub(REDACTED, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (int, float)):  # `%d` and `%f` must still work
        return value
    try:
        text = str(value)  # a URL object (httpx logs its requests' URLs), an exception...
    except Exception:  # formatting fails the same way later: nothing can leak through it
        return value
    redacted = redact(text)
    return value if redacted == text else redacted


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record in place, keeping the arguments' shape (uvicorn's access formatter
    unpacks them itself); a traceback is formatted here so its text is redacted too."""
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    args = record.args
    if isinstance(args, tuple):
        record.args = tuple(_redact_value(a) for a in args)
    elif isinstance(args, dict):
        record.args = {k: _redact_value(v) for k, v in args.items()}
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactTokens(logging.Filter):
    """The same redaction as a logging filter, for handlers built outside this process's
    record factory (a test's own records, a library that makes LogRecords by hand)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_installed = False


def install_log_redaction() -> None:
    """Make every LogRecord of the process redacted at creation (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    logging.setLogRecordFactory(redacting_factory)
    _installed = True
