"""Per-subscriber sequence accounting: missing, duplicated and out-of-order seqs.

Pure and tiny so it can be unit-tested and inlined cheaply: the subscriber handles the common
case (`seq == expected`) itself and calls `observe` only for the unusual ones.
"""

from __future__ import annotations

__all__ = ["SeqTracker"]


class SeqTracker:
    """Tracks one subscriber's view of one project's sequence within one epoch.

    `expected` is the next seq an in-order stream would deliver (0 until the welcome). Holes
    are kept as [lo, hi) ranges, so a late seq is told apart from a duplicate and a big jump
    costs one range, not one set entry per missing seq.
    """

    __slots__ = ("duplicates", "expected", "gap_skipped", "holes", "out_of_order", "received")

    def __init__(self) -> None:
        self.expected = 0
        self.received = 0  # distinct seqs delivered
        self.duplicates = 0
        self.out_of_order = 0
        self.gap_skipped = 0  # seqs the hub declared lost with a gap frame
        self.holes: list[list[int]] = []

    @property
    def started(self) -> bool:
        return self.expected > 0

    @property
    def last(self) -> int:
        """Highest seq seen (or the welcome head): what to resume from with `since`."""
        return self.expected - 1

    def start(self, head: int) -> None:
        """First welcome: live from head + 1. Later welcomes (resume) change nothing."""
        if self.expected == 0:
            self.expected = head + 1

    def observe(self, seq: int) -> bool:
        """Account one event; True when it is a new delivery (not a duplicate)."""
        expected = self.expected
        if seq == expected:
            self.expected = seq + 1
        elif seq > expected:
            self.holes.append([expected, seq])
            self.expected = seq + 1
        elif seq < expected - 1 and self._fill_hole(seq):
            self.out_of_order += 1
        else:
            self.duplicates += 1
            return False
        self.received += 1
        return True

    def gap(self, head: int) -> None:
        """The hub declared everything up to `head` unrecoverable: skip it, counted."""
        if head >= self.expected:
            self.gap_skipped += head - self.expected + 1
            self.expected = head + 1

    def missing(self, final: int) -> int:
        """Seqs up to `final` never delivered nor declared by a gap."""
        held = sum(hi - lo for lo, hi in self.holes)
        return held + max(0, final - self.last)

    def _fill_hole(self, seq: int) -> bool:
        for i, (lo, hi) in enumerate(self.holes):
            if lo <= seq < hi:
                if lo == hi - 1:
                    del self.holes[i]
                elif seq == lo:
                    self.holes[i][0] = lo + 1
                elif seq == hi - 1:
                    self.holes[i][1] = seq
                else:
                    self.holes[i : i + 1] = [[lo, seq], [seq + 1, hi]]
                return True
        return False
