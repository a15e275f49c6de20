"""Node tools the suite drives (TypeScript's `tsc`, the AsyncAPI parser, ...).

They are pinned in tests/js/package.json and its lock file and installed with `npm ci` into
tests/js/node_modules the first time a test asks for them, so a fresh clone needs only node
and npm (CI fails, does not skip, without them). Call `node_tools()` from a test or fixture.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from .support import require

JS_DIR = Path(__file__).parent / "js"
_STAMP = JS_DIR / "node_modules" / ".installed-lock-sha256"
NPM_CI_TIMEOUT_S = 300


def missing() -> str | None:
    """Why Node tools cannot run here (None when they can)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install nodejs npm)"
    return None


def node_tools() -> Path:
    """tests/js, with its node_modules installed to match the lock file."""
    require(missing())
    lock_hash = hashlib.sha256((JS_DIR / "package-lock.json").read_bytes()).hexdigest()
    if not _STAMP.exists() or _STAMP.read_text() != lock_hash:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=JS_DIR,
            check=True,
            timeout=NPM_CI_TIMEOUT_S,
        )
        _STAMP.write_text(lock_hash)
    return JS_DIR


def bin_path(name: str) -> Path:
    """An executable from tests/js/node_modules/.bin (e.g. `tsc`)."""
    return node_tools() / "node_modules" / ".bin" / name
