"""`hub codegen ts`: the declarations for the chosen catalogs, printed or written to a file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..wire.catalog import load_catalogs
from .declarations import render_declarations

__all__ = ["is_current", "typescript_for", "write_if_changed"]


def typescript_for(catalogs: Sequence[str] | None, *, protocol_only: bool = False) -> str:
    """The .d.ts text: the protocol alone, or with the event types of `catalogs` (MODULE:ATTR
    specs; None: every installed catalog). Raises CatalogLoadError (a ValueError)."""
    if protocol_only:
        if catalogs is not None:
            raise ValueError("--protocol-only loads no catalog: drop --catalog/--no-catalogs")
        return render_declarations(None, "hub codegen ts --protocol-only")
    catalog = load_catalogs(catalogs)
    events = {t: p for t in catalog.types() if (p := catalog.payload_type(t)) is not None}
    if catalogs is None:
        command = "hub codegen ts"
    elif not catalogs:
        command = "hub codegen ts --no-catalogs"
    else:
        command = "hub codegen ts" + "".join(f" --catalog {spec}" for spec in catalogs)
    loaded = [f"{name} ({len(types)} types)" for name, types in catalog.sources.items()]
    return render_declarations(events, command, sources=", ".join(loaded) or "none")


def is_current(path: Path, text: str) -> bool:
    """Whether `path` holds exactly `text` (False when it does not exist)."""
    try:
        return path.read_text(encoding="utf-8") == text
    except FileNotFoundError:
        return False


def write_if_changed(path: Path, text: str) -> bool:
    """Write `text` to `path` unless it already holds it (a build watching the file then does
    not rebuild); atomically, so a reader never sees half a file. True when written."""
    if is_current(path, text):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: that makes the file private (0600); this one gets the umask's mode.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("x", encoding="utf-8", newline="\n") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return True
