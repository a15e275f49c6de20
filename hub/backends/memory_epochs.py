"""EpochBook: the epoch a memory-backend project has before it exists, and gets when it does.

A read of a project that does not exist answers an empty view (head 0) without allocating
it, so its epoch must already be the one the first publish will give the project: a client
that saw head 0 in epoch E then replays from 0 instead of being told `gap`. The epoch is
derived from the process epoch, the project id and a generation counter of the project's
slot; dropping a project bumps its slot, so a project dropped and created again never
reuses an epoch (a client holding an old seq is told `gap`). Memory is fixed: one counter
per slot, whatever the number of project ids ever read.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Final

from .base import new_epoch

__all__ = ["EpochBook"]

SLOTS: Final = 16_384  # 128 KiB of counters; a drop changes the empty-view epoch of 1/SLOTS ids


class EpochBook:
    def __init__(self, process_epoch: str | None = None) -> None:
        self.process_epoch = process_epoch or new_epoch()
        self._generations = array("Q", bytes(8 * SLOTS))

    @staticmethod
    def _slot(project: str) -> int:
        digest = hashlib.blake2b(project.encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") % SLOTS

    def epoch(self, project: str) -> str:
        """The epoch `project` has next: stable until a project of its slot is dropped."""
        generation = self._generations[self._slot(project)]
        seed = f"{self.process_epoch}\0{generation}\0{project}".encode()
        return hashlib.blake2b(seed, digest_size=6).hexdigest()

    def dropped(self, project: str) -> None:
        self._generations[self._slot(project)] += 1
