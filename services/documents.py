"""Reading, normalising and chunking documents: pure functions, no I/O beyond the bytes given.

Supported: `.txt`, `.md`/`.markdown`, `.html`/`.htm`, `.json`, `.csv`. Text must be UTF-8
(a BOM is accepted): guessing another encoding would silently store mojibake.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Any, Final

import msgspec

from services.chunking import TooManyChunks, chunk_text
from services.parse_budget import ParseBudget

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "SUPPORTED_SUFFIXES",
    "DocumentError",
    "DocumentTooLarge",
    "EmptyDocument",
    "ParsedDocument",
    "TooManyChunks",
    "UnreadableDocument",
    "UnsupportedDocument",
    "chunk_text",
    "content_hash",
    "normalise",
    "parse_document",
]

MAX_DOCUMENT_BYTES: Final = 5 * 1024 * 1024


class DocumentError(ValueError):
    """A file that cannot become a document; `kind` names the reason for events and APIs."""

    kind = "DocumentError"

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class UnsupportedDocument(DocumentError):
    kind = "UnsupportedDocument"


class UnreadableDocument(DocumentError):
    kind = "UnreadableDocument"


class EmptyDocument(DocumentError):
    kind = "EmptyDocument"


class DocumentTooLarge(DocumentError):
    """A file that produces more text or chunks than a document (or its job) may hold."""

    kind = "DocumentTooLarge"


class ParsedDocument(msgspec.Struct, frozen=True):
    name: str
    media_type: str
    title: str
    text: str  # normalised
    size: int  # bytes of the original file


# --- normalising -------------------------------------------------------------------------

# Runs of blanks that are not already one plain space: single spaces (most of them) do not
# match, so a long line costs one scan, not one replacement per word.
_SPACES = re.compile(r" [ \t\f\v\u00a0]+|[\t\f\v\u00a0][ \t\f\v\u00a0]*")
_BLANK_LINES = re.compile(r"\n{3,}")
# Control characters (category Cc) but newline and tab, and lone surrogates (JSON's "\ud800"),
# which no UTF-8 encoder accepts.
_UNWANTED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def normalise(text: str, budget: ParseBudget | None = None) -> str:
    """NFC, Unix newlines, no control characters, single spaces, at most one blank line."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _UNWANTED.sub("", text)
    lines = []
    for number, line in enumerate(text.split("\n")):
        if budget is not None and number % 1024 == 0:
            budget.check()
        lines.append(_SPACES.sub(" ", line).strip())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def content_hash(text: str) -> str:
    """Identity of a document for duplicate detection: sha256 of its normalised text."""
    return hashlib.sha256(text.encode()).hexdigest()


# --- readers -----------------------------------------------------------------------------


def _decode(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableDocument(name, f"not valid UTF-8 (byte {exc.start})") from None


# No class may match its own opening bracket: each scan then stops at the next one, which keeps
# a hostile "[[[[..." or "[a]([a](..." linear instead of quadratic.
_MD_IMAGE = re.compile(r"!\[([^\[\]\n]*)\]\([^()\s]*\)")
_MD_LINK = re.compile(r"\[([^\[\]\n]+)\]\([^()\s]*\)")
_MD_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.MULTILINE)
_MD_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
_MD_FENCE = re.compile(r"^[ \t]*(```|~~~).*$", re.MULTILINE)
_MD_LIST = re.compile(r"^[ \t]*(?:[-*+]|\d+[.)])[ \t]+", re.MULTILINE)
_MD_QUOTE = re.compile(r"^[ \t]*>[ \t]?", re.MULTILINE)
_MD_TABLE_RULE = re.compile(
    r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$", re.MULTILINE
)
_MD_TABLE_ROW = re.compile(r"^[ \t]*\|(.*)\|[ \t]*$", re.MULTILINE)


def _read_markdown(name: str, text: str, budget: ParseBudget) -> tuple[str, str]:
    title_match = re.search(r"^[ \t]{0,3}#[ \t]+(.+)$", text, re.MULTILINE)
    text = _MD_FENCE.sub("", text)
    text = _MD_TABLE_RULE.sub("", text)
    text = _MD_TABLE_ROW.sub(lambda m: "; ".join(c.strip() for c in m.group(1).split("|")), text)
    budget.check()
    text = _MD_IMAGE.sub(r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    budget.check()
    text = _MD_HEADING.sub("", text)
    text = _MD_LIST.sub("- ", text)
    text = _MD_QUOTE.sub("", text)
    text = _MD_EMPHASIS.sub("", text)
    if not budget.add(len(text)):
        raise DocumentTooLarge(name, budget.over())
    return (title_match.group(1).strip() if title_match else ""), text


class _HtmlText(HTMLParser):
    _BLOCKS: Final = frozenset(
        {
            "p",
            "div",
            "br",
            "li",
            "tr",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "section",
            "article",
            "header",
            "footer",
            "table",
            "ul",
            "ol",
            "blockquote",
            "pre",
            "hr",
        }
    )
    _SKIP: Final = frozenset({"script", "style", "noscript", "template", "head"})

    def __init__(self, budget: ParseBudget) -> None:
        super().__init__(convert_charrefs=True)
        self.budget = budget
        self.parts: list[str] = []
        self.title = ""
        self._skip_depth = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skip_depth += 1
        if tag in self._BLOCKS:
            self.parts.append("\n\n" if tag not in ("br", "li", "tr") else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP and self._skip_depth:
            self._skip_depth -= 1
        if tag in self._BLOCKS:
            self.parts.append("\n\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            if len(self.title) < 1000:
                self.title += data[:1000]
        elif not self._skip_depth:
            self.parts.append(data.replace("\n", " "))
            self.budget.add(len(data))


_HTML_FEED = 64 * 1024  # characters per `feed`: cancel and budget checks in between


def _read_html(name: str, text: str, budget: ParseBudget) -> tuple[str, str]:
    parser = _HtmlText(budget)
    for start in range(0, len(text), _HTML_FEED):
        parser.feed(text[start : start + _HTML_FEED])
        if budget.chars > budget.max_chars:
            raise DocumentTooLarge(name, budget.over())
    parser.close()
    if budget.chars > budget.max_chars:
        raise DocumentTooLarge(name, budget.over())
    return parser.title.strip(), "".join(parser.parts)


class _Lines:
    """Output lines counted against the budget, naming the file when it runs out."""

    def __init__(self, name: str, budget: ParseBudget) -> None:
        self.name = name
        self.budget = budget
        self.lines: list[str] = []

    def append(self, line: str) -> None:
        if not self.budget.add(len(line) + 1):
            raise DocumentTooLarge(self.name, self.budget.over())
        self.lines.append(line)


def _flatten_json(value: Any, path: str, out: _Lines, depth: int = 0) -> None:
    out.budget.check()  # between nodes: a cancelled job stops here
    if depth > out.budget.max_json_depth:
        raise UnreadableDocument(
            out.name, f"JSON nested deeper than {out.budget.max_json_depth} levels at {path}"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten_json(item, f"{path}.{key}" if path else str(key), out, depth + 1)
    elif isinstance(value, list):
        if all(not isinstance(item, dict | list) for item in value):
            out.append(f"{path}: {', '.join(str(item) for item in value)}")
        else:
            for i, item in enumerate(value):
                out.append("")  # a blank line between records keeps them in separate chunks
                _flatten_json(item, f"{path}[{i}]", out, depth + 1)
    elif value is not None:
        out.append(f"{path}: {value}" if path else str(value))


def _read_json(name: str, text: str, budget: ParseBudget) -> tuple[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnreadableDocument(
            name, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise UnreadableDocument(name, "JSON nested too deeply") from None
    title = ""
    if isinstance(value, dict):
        title = str(value.get("title") or value.get("name") or "")
    lines = _Lines(name, budget)
    _flatten_json(value, "", lines)
    return title[:1000], "\n".join(lines.lines)


def _read_csv(name: str, text: str, budget: ParseBudget) -> tuple[str, str]:
    lines = _Lines(name, budget)
    header: list[str] | None = None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:  # row by row: the budget stops an amplifying file early
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [h.strip() for h in row]
                continue
            if len(row) != len(header):
                raise UnreadableDocument(
                    name,
                    f"invalid CSV: row {reader.line_num} has {len(row)} fields, "
                    f"header has {len(header)}",
                )
            # Empty cells say nothing: leaving them out keeps a wide sparse sheet small.
            lines.append(
                "; ".join(
                    f"{h}: {c.strip()}" for h, c in zip(header, row, strict=True) if c.strip()
                )
            )
    except csv.Error as exc:
        raise UnreadableDocument(name, f"invalid CSV: {exc}") from None
    return "", "\n".join(lines.lines)


def _read_text(name: str, text: str, budget: ParseBudget) -> tuple[str, str]:
    if not budget.add(len(text)):
        raise DocumentTooLarge(name, budget.over())
    return "", text


_READERS: Final = {
    ".txt": ("text/plain", _read_text),
    ".md": ("text/markdown", _read_markdown),
    ".markdown": ("text/markdown", _read_markdown),
    ".html": ("text/html", _read_html),
    ".htm": ("text/html", _read_html),
    ".json": ("application/json", _read_json),
    ".csv": ("text/csv", _read_csv),
}
SUPPORTED_SUFFIXES: Final = frozenset(_READERS)


def parse_document(name: str, raw: bytes, budget: ParseBudget | None = None) -> ParsedDocument:
    """Turn a file's bytes into a normalised document, or raise a `DocumentError`.

    `budget` bounds the text produced and carries the job's cancel flag (`ParseCancelled`).
    """
    budget = budget or ParseBudget()
    suffix = PurePath(name).suffix.lower()
    if suffix not in _READERS:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise UnsupportedDocument(
            name, f"unsupported file type {suffix or '(none)'!r}; supported: {supported}"
        )
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise UnreadableDocument(name, f"{len(raw)} bytes is over the {MAX_DOCUMENT_BYTES} limit")
    media_type, reader = _READERS[suffix]
    title, body = reader(name, _decode(name, raw), budget)
    text = normalise(body, budget)
    if not text:
        raise EmptyDocument(name, "no text after normalising")
    if not title:
        first_line = text.split("\n", 1)[0]
        title = first_line[:80] if len(first_line) <= 80 else PurePath(name).stem
    return ParsedDocument(name, media_type, normalise(title)[:200], text, len(raw))
