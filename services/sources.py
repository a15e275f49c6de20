"""The files of an ingest job: where their bytes come from, confined, and released once parsed.

A folder's files are listed without following symlinks out of it: every file is resolved and
must stay under the folder (itself under an allowed root), so a link to `/etc/passwd` inside
an allowed folder is a file error, never ingested. An upload's bytes are dropped as soon as
the file is parsed, so a job's memory is one batch of payloads, not all of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from services.documents import MAX_DOCUMENT_BYTES, DocumentTooLarge, UnreadableDocument

__all__ = [
    "IngestError",
    "Source",
    "SourceNotFound",
    "TooManyFiles",
    "folder_sources",
    "list_folder",
    "upload_sources",
]


class IngestError(RuntimeError):
    pass


class SourceNotFound(IngestError):
    pass


class TooManyFiles(IngestError):
    pass


class Source:
    """One file to ingest: its name and its bytes, read (or handed over) once by `take()`."""

    __slots__ = ("_content", "_path", "_root", "name")

    def __init__(
        self,
        name: str,
        *,
        content: bytes | None = None,
        path: Path | None = None,
        root: Path | None = None,
    ) -> None:
        self.name = name
        self._content = content
        self._path = path
        self._root = root

    def take(self) -> bytes:
        """The file's bytes (blocking for a path: call it in a worker thread); once only."""
        content, self._content = self._content, None
        if content is not None:
            return content
        if self._path is None or self._root is None:
            raise UnreadableDocument(self.name, "already read")
        return _read_confined(self.name, self._path, self._root)


def _read_confined(name: str, path: Path, root: Path) -> bytes:
    resolved = path.resolve()
    if root not in resolved.parents:
        raise UnreadableDocument(name, "a link out of the ingested folder")
    with open(resolved, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > MAX_DOCUMENT_BYTES:
            raise DocumentTooLarge(name, f"{size} bytes is over the {MAX_DOCUMENT_BYTES} limit")
        return file.read(MAX_DOCUMENT_BYTES + 1)


def list_folder(folder: Path, max_files: int = 10_000) -> list[Path]:
    """Regular files under `folder`, recursively, sorted, without hidden files or folders.

    Symlinked folders are not entered; symlinked files are listed (and confined when read).
    """
    if not folder.is_dir():
        raise SourceNotFound(f"folder not found: {folder}")
    files: list[Path] = []
    for directory, subdirs, names in os.walk(folder):  # followlinks=False
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in names:
            path = Path(directory) / name
            if name.startswith(".") or not path.is_file():
                continue
            files.append(path)
            if len(files) > max_files:
                raise TooManyFiles(f"{folder} holds more than {max_files} files (the job limit)")
    return sorted(files)


def folder_sources(folder: Path, max_files: int) -> list[Source]:
    root = folder.resolve()
    return [
        Source(str(path.relative_to(folder)), path=path, root=root)
        for path in list_folder(folder, max_files)
    ]


def upload_sources(uploads: list[tuple[str, bytes]]) -> list[Source]:
    return [Source(name, content=content) for name, content in uploads]
