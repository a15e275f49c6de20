"""The files of an ingest job: where their bytes come from, confined, and released once parsed.

A folder's files are listed without following symlinks out of it: every file is resolved and
must stay under the folder (itself under an allowed root), so a link to `/etc/passwd` inside
an allowed folder is a file error, never ingested. An upload's bytes are dropped as soon as
the file is parsed, so a job's memory is one batch of payloads, not all of them.

No absolute server path leaves the process: events and errors name a folder relative to the
ingest root that holds it (`shown_folder`), and files relative to the ingested folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from services.documents import MAX_DOCUMENT_BYTES, DocumentTooLarge, UnreadableDocument

__all__ = [
    "IngestError",
    "Source",
    "SourceNotFound",
    "TooManyFiles",
    "folder_sources",
    "list_folder",
    "shown_folder",
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


def shown_folder(folder: Path, roots: Sequence[Path] = ()) -> str:
    """How events and errors name `folder`: relative to the ingest root holding it (`.` for
    the root itself), as the HTTP API's `folder` takes it; a folder under none of `roots`
    (given in code) by its own name. Never an absolute path."""
    path = folder.resolve()
    for root in roots:
        root = root.resolve()
        if path == root or root in path.parents:
            return PurePosixPath(*path.relative_to(root).parts).as_posix()
    return path.name or "."


def list_folder(folder: Path, max_files: int = 10_000, shown: str | None = None) -> list[Path]:
    """Regular files under `folder`, recursively, sorted, without hidden files or folders.

    Symlinked folders are not entered; symlinked files are listed (and confined when read).
    Errors name the folder as `shown` (default: its own name), never by its absolute path.
    """
    shown = shown if shown is not None else shown_folder(folder)
    if not folder.is_dir():
        raise SourceNotFound(f"folder not found: {shown!r}")
    files: list[Path] = []
    for directory, subdirs, names in os.walk(folder):  # followlinks=False
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in names:
            path = Path(directory) / name
            if name.startswith(".") or not path.is_file():
                continue
            files.append(path)
            if len(files) > max_files:
                raise TooManyFiles(
                    f"folder {shown!r} holds more than {max_files} files (the job limit)"
                )
    return sorted(files)


def folder_sources(folder: Path, max_files: int, shown: str | None = None) -> list[Source]:
    root = folder.resolve()
    return [
        Source(path.relative_to(folder).as_posix(), path=path, root=root)
        for path in list_folder(folder, max_files, shown)
    ]


def upload_sources(uploads: list[tuple[str, bytes]]) -> list[Source]:
    return [Source(name, content=content) for name, content in uploads]
