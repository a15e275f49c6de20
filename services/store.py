"""The document store: SQLite tables of documents and chunks, with an FTS5 index of chunks.

One connection guarded by a lock; every public method is async and runs its SQL in a worker
thread (`asyncio.to_thread`), so a batch insert never stalls the event loop that fans events
out. Each batch is one transaction: a cancelled job keeps the batches it finished.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from services.documents import (
    DocumentTooLarge,
    ParsedDocument,
    TooManyChunks,
    chunk_text,
    content_hash,
)
from services.parse_budget import ParseBudget
from services.terms import terms

__all__ = [
    "BatchResult",
    "Chunk",
    "NewDocument",
    "SearchHit",
    "Store",
    "fts_query",
    "new_document",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    media_type TEXT NOT NULL,
    title TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (project, content_hash)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    project TEXT NOT NULL,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (document_id, ordinal);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, content='chunks', content_rowid='id', tokenize='porter unicode61'
);
"""


class NewDocument(msgspec.Struct, frozen=True):
    document: ParsedDocument
    chunks: list[str]
    hash: str


class BatchResult(msgspec.Struct):
    documents: int = 0
    chunks: int = 0
    bytes: int = 0
    duplicates: int = 0


class SearchHit(msgspec.Struct, frozen=True):
    chunk_id: int
    document_id: int
    name: str
    title: str
    snippet: str
    score: float  # bm25: lower is better


class Chunk(msgspec.Struct, frozen=True):
    id: int
    document_id: int
    ordinal: int
    name: str
    title: str
    text: str


def fts_query(text: str) -> str:
    """An FTS5 MATCH expression from free text: content words, quoted, OR-ed.

    Quoting each term keeps user punctuation (`-`, `"`, `:`) from being read as FTS syntax.
    """
    return " OR ".join(f'"{term}"' for term in terms(text))


class Store:
    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def interrupt(self) -> None:
        """Abort a batch write under way in its thread (shutdown): its transaction is rolled
        back whole, so the corpus stays consistent and the process need not wait for it."""
        self._db.interrupt()

    async def add_batch(
        self, project: str, job_id: str, docs: Sequence[NewDocument]
    ) -> BatchResult:
        """Store new documents in one transaction; duplicates (same hash) are counted only."""
        return await asyncio.to_thread(self._add_batch, project, job_id, docs)

    async def search(self, project: str, query: str, limit: int = 5) -> list[SearchHit]:
        return await asyncio.to_thread(self._search, project, query, limit)

    async def read_chunk(self, project: str, chunk_id: int) -> Chunk | None:
        return await asyncio.to_thread(self._read_chunk, project, chunk_id)

    async def counts(self, project: str) -> tuple[int, int]:
        """(documents, chunks) stored for the project."""
        return await asyncio.to_thread(self._counts, project)

    async def documents(self, project: str, limit: int = 100) -> list[dict[str, object]]:
        return await asyncio.to_thread(self._documents, project, limit)

    # --- sync parts, run in a worker thread -------------------------------------------

    def _add_batch(self, project: str, job_id: str, docs: Sequence[NewDocument]) -> BatchResult:
        result = BatchResult()
        now = time.time_ns() // 1_000_000
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for new in docs:
                    doc = new.document
                    cur = db.execute(
                        "INSERT INTO documents (project, name, media_type, title, content_hash,"
                        " size, chunk_count, job_id, created_ms) VALUES (?,?,?,?,?,?,?,?,?)"
                        " ON CONFLICT (project, content_hash) DO NOTHING",
                        (
                            project,
                            doc.name,
                            doc.media_type,
                            doc.title,
                            new.hash,
                            doc.size,
                            len(new.chunks),
                            job_id,
                            now,
                        ),
                    )
                    if cur.rowcount == 0:
                        result.duplicates += 1
                        continue
                    doc_id = cur.lastrowid
                    for ordinal, text in enumerate(new.chunks):
                        chunk = db.execute(
                            "INSERT INTO chunks (project, document_id, ordinal, text)"
                            " VALUES (?,?,?,?)",
                            (project, doc_id, ordinal, text),
                        )
                        db.execute(
                            "INSERT INTO chunks_fts (rowid, text) VALUES (?, ?)",
                            (chunk.lastrowid, text),
                        )
                    result.documents += 1
                    result.chunks += len(new.chunks)
                    result.bytes += doc.size
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # an interrupted write was already rolled back
                    db.execute("ROLLBACK")
                raise
        return result

    def _search(self, project: str, query: str, limit: int) -> list[SearchHit]:
        match = fts_query(query)
        if not match:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, c.document_id, d.name, d.title, bm25(chunks_fts) AS score,"
                " snippet(chunks_fts, 0, '[', ']', ' … ', 16) AS snippet"
                " FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid"
                " JOIN documents d ON d.id = c.document_id"
                " WHERE chunks_fts MATCH ? AND c.project = ?"
                " ORDER BY score, c.id LIMIT ?",
                (match, project, limit),
            ).fetchall()
        return [
            SearchHit(r["id"], r["document_id"], r["name"], r["title"], r["snippet"], r["score"])
            for r in rows
        ]

    def _read_chunk(self, project: str, chunk_id: int) -> Chunk | None:
        with self._lock:
            row = self._db.execute(
                "SELECT c.id, c.document_id, c.ordinal, c.text, d.name, d.title FROM chunks c"
                " JOIN documents d ON d.id = c.document_id WHERE c.id = ? AND c.project = ?",
                (chunk_id, project),
            ).fetchone()
        if row is None:
            return None
        return Chunk(
            row["id"], row["document_id"], row["ordinal"], row["name"], row["title"], row["text"]
        )

    def _counts(self, project: str) -> tuple[int, int]:
        with self._lock:
            docs = self._db.execute(
                "SELECT count(*) FROM documents WHERE project = ?", (project,)
            ).fetchone()[0]
            chunks = self._db.execute(
                "SELECT count(*) FROM chunks WHERE project = ?", (project,)
            ).fetchone()[0]
        return int(docs), int(chunks)

    def _documents(self, project: str, limit: int) -> list[dict[str, object]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, media_type, title, content_hash, size, chunk_count, job_id,"
                " created_ms FROM documents WHERE project = ? ORDER BY id LIMIT ?",
                (project, limit),
            ).fetchall()
        return [dict(row) for row in rows]


def new_document(
    doc: ParsedDocument, max_chars: int, budget: ParseBudget | None = None
) -> NewDocument:
    """Chunk and hash a parsed document (CPU work: call it in a worker thread for big files)."""
    try:
        chunks = chunk_text(doc.text, max_chars, budget)
    except TooManyChunks as exc:
        raise DocumentTooLarge(doc.name, str(exc)) from None
    return NewDocument(doc, chunks, content_hash(doc.text))
