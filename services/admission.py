"""Admission control: how much work may run at once, per project and in the whole process.

A request over a limit is refused with 429 and `Retry-After` (the hub's `RateLimitExceeded`)
before anything is started or read, so the refusal itself costs nothing. A `Permit` is given
back (idempotently) when the work ends.
"""

from __future__ import annotations

from collections import Counter

from hub.limits import RateLimitExceeded

__all__ = ["Permit", "Slots", "TooBusy"]

RETRY_AFTER_S = 1.0


class TooBusy(RateLimitExceeded):
    """Over an admission limit: 429, retry later."""

    def __init__(self, message: str) -> None:
        super().__init__(message, RETRY_AFTER_S)


class Permit:
    """Units taken from `Slots`; `release()` gives them back, once."""

    __slots__ = ("_slots", "project", "units")

    def __init__(self, slots: Slots | None, project: str, units: int) -> None:
        self._slots = slots
        self.project = project
        self.units = units

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.give_back(self)


class Slots:
    """Units of some work (runs, nodes, bytes) in use, per project and in total."""

    def __init__(self, what: str, per_project: int, total: int) -> None:
        self.what = what
        self.per_project = per_project
        self.total = total
        self.used = 0
        self.by_project: Counter[str] = Counter()

    def take(self, project: str, units: int = 1) -> Permit:
        if self.used + units > self.total:
            raise TooBusy(f"too many {self.what} in this process (limit {self.total}); retry later")
        if self.by_project[project] + units > self.per_project:
            raise TooBusy(
                f"too many {self.what} in project {project!r} (limit {self.per_project}); "
                "retry later"
            )
        self.used += units
        self.by_project[project] += units
        return Permit(self, project, units)

    def give_back(self, permit: Permit) -> None:
        self.used -= permit.units
        self.by_project[permit.project] -= permit.units
        if self.by_project[permit.project] <= 0:
            del self.by_project[permit.project]

    @staticmethod
    def unlimited() -> Permit:
        """A permit for work started by code rather than a request (workflow nodes, scripts)."""
        return Permit(None, "", 0)
