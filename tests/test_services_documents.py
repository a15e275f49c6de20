"""Document reading, normalising and chunking; the store's search; the local model."""

from __future__ import annotations

import json

import pytest

from services.documents import (
    EmptyDocument,
    UnreadableDocument,
    UnsupportedDocument,
    chunk_text,
    content_hash,
    normalise,
    parse_document,
)
from services.model import ExtractiveModel, Passage, split_sentences
from services.store import Store, fts_query, new_document


def test_normalise_unifies_newlines_spaces_and_unicode() -> None:
    raw = "Cafe\u0301  au\tlait\r\n\r\n\r\n\r\nsecond\x00 line  \rthird"
    assert normalise(raw) == "Caf\u00e9 au lait\n\nsecond line\nthird"


def test_same_text_in_different_whitespace_has_the_same_hash() -> None:
    assert content_hash(normalise("a  b\r\nc")) == content_hash(normalise("a b\nc  "))


def test_markdown_loses_markup_and_keeps_title() -> None:
    md = b"# Swarm guide\n\nSee **the** [notes](http://x).\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    doc = parse_document("guide.md", md)
    assert doc.title == "Swarm guide"
    assert doc.media_type == "text/markdown"
    assert doc.text == "Swarm guide\n\nSee the notes.\n\na; b\n\n1; 2"


def test_html_skips_scripts_and_keeps_blocks_apart() -> None:
    html = (
        b"<html><head><title>T</title><script>var x = 1;</script></head>"
        b"<body><h1>Head</h1><p>One &amp; two.</p><ul><li>a</li><li>b</li></ul></body></html>"
    )
    doc = parse_document("page.html", html)
    assert doc.title == "T"
    assert "var x" not in doc.text
    assert doc.text == "Head\n\nOne & two.\n\na\n\nb"


def test_json_is_flattened_to_paths() -> None:
    raw = json.dumps({"title": "Register", "hives": [{"id": "RB-01", "queen": 2024}]}).encode()
    doc = parse_document("register.json", raw)
    assert doc.title == "Register"
    assert "hives[0].id: RB-01" in doc.text
    assert "hives[0].queen: 2024" in doc.text


def test_csv_rows_become_labelled_lines() -> None:
    doc = parse_document("log.csv", b"hive,kg\nRB-01,21.5\nRB-02,18\n")
    assert doc.text == "hive: RB-01; kg: 21.5\nhive: RB-02; kg: 18"


@pytest.mark.parametrize(
    ("name", "raw", "error", "words"),
    [
        ("slides.pdf", b"%PDF", UnsupportedDocument, "unsupported file type '.pdf'"),
        ("README", b"text", UnsupportedDocument, "unsupported file type '(none)'"),
        ("latin.txt", "caf\u00e9".encode("latin-1"), UnreadableDocument, "not valid UTF-8"),
        ("bad.json", b'{"a": ', UnreadableDocument, "invalid JSON at line 1"),
        ("ragged.csv", b"a,b\n1,2,3\n", UnreadableDocument, "row 2 has 3 fields"),
        ("blank.md", b"  \n\n ", EmptyDocument, "no text"),
    ],
)
def test_bad_files_raise_a_clear_error_naming_the_file(
    name: str, raw: bytes, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as info:
        parse_document(name, raw)
    assert name in str(info.value)
    assert words in str(info.value)


def test_utf8_bom_is_accepted() -> None:
    assert parse_document("bom.txt", b"\xef\xbb\xbfhello there").text == "hello there"


def test_chunks_keep_paragraphs_and_respect_the_size() -> None:
    paragraphs = [f"Paragraph {i} " + "word " * 30 for i in range(10)]
    text = normalise("\n\n".join(paragraphs))
    chunks = chunk_text(text, max_chars=400)
    assert all(len(c) <= 400 for c in chunks)
    assert "".join(chunks).replace("\n\n", "") == text.replace("\n\n", "")
    assert all(c.startswith("Paragraph") for c in chunks)


def test_a_long_sentence_is_cut_at_spaces() -> None:
    text = "x" * 5 + " " + "lorem " * 400
    chunks = chunk_text(normalise(text), max_chars=100)
    assert all(0 < len(c) <= 100 for c in chunks)
    assert " ".join(chunks).split() == normalise(text).split()


def test_fts_query_quotes_terms_and_drops_stopwords() -> None:
    assert fts_query('How do I treat "varroa" -mites?') == '"treat" OR "varroa" OR "mites"'
    assert fts_query("how is it?") == ""


async def test_store_skips_duplicates_and_finds_chunks_by_stemmed_terms() -> None:
    store = Store()
    try:
        doc = parse_document("a.txt", b"Swarming colonies leave with the old queen.")
        same = parse_document("copy.txt", b"Swarming  colonies leave with the old queen.\n")
        other = parse_document("b.txt", b"Oxalic acid is given in December.")
        first = await store.add_batch("p", "j1", [new_document(doc, 800), new_document(same, 800)])
        assert (first.documents, first.duplicates) == (1, 1)
        second = await store.add_batch(
            "p", "j2", [new_document(doc, 800), new_document(other, 800)]
        )
        assert (second.documents, second.duplicates, second.chunks) == (1, 1, 1)
        hits = await store.search("p", "when do colonies swarm?")
        assert [h.name for h in hits] == ["a.txt"]
        chunk = await store.read_chunk("p", hits[0].chunk_id)
        assert chunk is not None and chunk.text == doc.text
        assert await store.search("other-project", "swarm") == []
        assert await store.counts("p") == (2, 2)
    finally:
        store.close()


def test_sentences_skip_headings_and_keep_long_rows() -> None:
    text = (
        "Treatment\n\n- Oxalic acid in December. Formic acid in summer!\n"
        "hive: RB-01; kg: 21; notes: a b c"
    )
    assert split_sentences(text) == [
        "Oxalic acid in December.",
        "Formic acid in summer!",
        "hive: RB-01; kg: 21; notes: a b c",
    ]


async def test_extractive_model_is_deterministic_and_quotes_its_sources() -> None:
    passages = [
        Passage(
            1,
            "varroa.md",
            "Varroa guide",
            "Mites spread viruses. Treat mites with oxalic acid in December.",
        ),
        Passage(2, "faq.txt", "FAQ", "Membership costs 35 pounds a year."),
    ]
    model = ExtractiveModel()
    first = "".join([d async for d in model.stream("answer", "How to treat mites?", passages)])
    again = "".join([d async for d in model.stream("answer", "How to treat mites?", passages)])
    assert first == again
    assert first.startswith("Mites spread viruses. Treat mites with oxalic acid in December.")
    assert first.endswith("Sources: Varroa guide (varroa.md).")
    nothing = "".join([d async for d in model.stream("answer", "zebra?", passages)])
    assert nothing == "I found nothing about zebra in this project's documents."
