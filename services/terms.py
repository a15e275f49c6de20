"""Terms of a text: lowercase word tokens without stopwords (search queries, the local model)."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["STOPWORDS", "terms", "words"]

_WORD: Final = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)?")

STOPWORDS: Final = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its itself just
    me more most my no nor not now of off on once only or other our ours out over own same she
    should so some such than that the their theirs them then there these they this those
    through to too under until up very was we were what when where which while who whom why
    will with would you your yours tell explain describe please know does do much many""".split()
)


def words(text: str) -> list[str]:
    """Word tokens, lowercased, in order."""
    return [w.lower() for w in _WORD.findall(text)]


def terms(text: str) -> list[str]:
    """Distinct content words of `text`, in first-seen order."""
    seen: dict[str, None] = {}
    for word in words(text):
        if len(word) > 1 and word not in STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)
