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

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "SUPPORTED_SUFFIXES",
    "DocumentError",
    "EmptyDocument",
    "ParsedDocument",
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


class ParsedDocument(msgspec.Struct, frozen=True):
    name: str
    media_type: str
    title: str
    text: str  # normalised
    size: int  # bytes of the original file


# --- normalising -------------------------------------------------------------------------

_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise(text: str) -> str:
    """NFC, Unix newlines, no control characters, single spaces, at most one blank line."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(
        ch for ch in text if ch == "\n" or ch == "\t" or unicodedata.category(ch) != "Cc"
    )
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
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


_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.MULTILINE)
_MD_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
_MD_FENCE = re.compile(r"^[ \t]*(```|~~~).*$", re.MULTILINE)
_MD_LIST = re.compile(r"^[ \t]*(?:[-*+]|\d+[.)])[ \t]+", re.MULTILINE)
_MD_QUOTE = re.compile(r"^[ \t]*>[ \t]?", re.MULTILINE)
_MD_TABLE_RULE = re.compile(
    r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$", re.MULTILINE
)
_MD_TABLE_ROW = re.compile(r"^[ \t]*\|(.*)\|[ \t]*$", re.MULTILINE)


def _read_markdown(name: str, text: str) -> tuple[str, str]:
    title_match = re.search(r"^[ \t]{0,3}#[ \t]+(.+)$", text, re.MULTILINE)
    text = _MD_FENCE.sub("", text)
    text = _MD_TABLE_RULE.sub("", text)
    text = _MD_TABLE_ROW.sub(lambda m: "; ".join(c.strip() for c in m.group(1).split("|")), text)
    text = _MD_IMAGE.sub(r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_HEADING.sub("", text)
    text = _MD_LIST.sub("- ", text)
    text = _MD_QUOTE.sub("", text)
    text = _MD_EMPHASIS.sub("", text)
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

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
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
            self.title += data
        elif not self._skip_depth:
            self.parts.append(data.replace("\n", " "))


def _read_html(name: str, text: str) -> tuple[str, str]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    return parser.title.strip(), "".join(parser.parts)


def _flatten_json(value: Any, path: str, out: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten_json(item, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list):
        if all(not isinstance(item, dict | list) for item in value):
            out.append(f"{path}: {', '.join(str(item) for item in value)}")
        else:
            for i, item in enumerate(value):
                out.append("")  # a blank line between records keeps them in separate chunks
                _flatten_json(item, f"{path}[{i}]", out)
    elif value is not None:
        out.append(f"{path}: {value}" if path else str(value))


def _read_json(name: str, text: str) -> tuple[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnreadableDocument(
            name, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    title = ""
    if isinstance(value, dict):
        title = str(value.get("title") or value.get("name") or "")
    lines: list[str] = []
    _flatten_json(value, "", lines)
    return title, "\n".join(lines)


def _read_csv(name: str, text: str) -> tuple[str, str]:
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise UnreadableDocument(name, f"invalid CSV: {exc}") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return "", ""
    header, records = rows[0], rows[1:]
    lines = []
    for number, row in enumerate(records, start=2):
        if len(row) != len(header):
            raise UnreadableDocument(
                name, f"invalid CSV: row {number} has {len(row)} fields, header has {len(header)}"
            )
        lines.append(
            "; ".join(f"{h.strip()}: {c.strip()}" for h, c in zip(header, row, strict=True))
        )
    return "", "\n".join(lines)


def _read_text(name: str, text: str) -> tuple[str, str]:
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


def parse_document(name: str, raw: bytes) -> ParsedDocument:
    """Turn a file's bytes into a normalised document, or raise a `DocumentError`."""
    suffix = PurePath(name).suffix.lower()
    if suffix not in _READERS:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise UnsupportedDocument(
            name, f"unsupported file type {suffix or '(none)'!r}; supported: {supported}"
        )
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise UnreadableDocument(name, f"{len(raw)} bytes is over the {MAX_DOCUMENT_BYTES} limit")
    media_type, reader = _READERS[suffix]
    title, body = reader(name, _decode(name, raw))
    text = normalise(body)
    if not text:
        raise EmptyDocument(name, "no text after normalising")
    if not title:
        first_line = text.split("\n", 1)[0]
        title = first_line[:80] if len(first_line) <= 80 else PurePath(name).stem
    return ParsedDocument(name, media_type, normalise(title)[:200], text, len(raw))


# --- chunking ----------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _split_long(paragraph: str, max_chars: int) -> list[str]:
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(paragraph):
        while len(sentence) > max_chars:  # a sentence longer than a chunk: cut at a space
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > max_chars:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return pieces


def chunk_text(text: str, max_chars: int = 800) -> list[str]:
    """Split normalised text into chunks of whole paragraphs (or sentences) <= max_chars.

    Paragraph boundaries are kept where possible, so a chunk reads as a unit when an agent
    quotes it.
    """
    chunks: list[str] = []
    current = ""
    for paragraph in text.split("\n\n"):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) > max_chars:
            if current:
                chunks.append(current)
                current = ""
            chunks.extend(_split_long(paragraph, max_chars))
            continue
        if current and len(current) + 2 + len(paragraph) > max_chars:
            chunks.append(current)
            current = paragraph
        else:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        chunks.append(current)
    return chunks
