"""What an OCSP responder counts, written to the store once a second for `casign metrics`.

Like the signer (`worker/figures.py`), the responder serves no figures itself: a task of its
event loop takes a snapshot (the cache belongs to that loop) every second and a thread of its
own writes it, whole, under the responder's own key (`store.figures_board.FiguresPublisher`),
which lapses `ttl_seconds` after the last write, so a responder that stops leaves no figures. The
counters are totals since the responder started; a new process under the same name starts
them over, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from store.figures_board import figure_count


@dataclass(slots=True)
class AnswerCounts:
    """Counted by the responder as it answers and renews (on its event loop)."""

    from_cache: int = 0  # answered with a signed answer held (no signature made for it)
    signed: int = 0  # answered with a signature made for this request (first ask, or a nonce)
    renewed_due: int = 0  # answers signed again because their renewal time came
    renewed_changed: int = 0  # answers signed again because their index line changed


@dataclass(frozen=True, slots=True)
class ResponderFigures:
    """One responder's figures at one moment: its cache, and its counts since it started."""

    cache_answers: int
    cache_bytes: int
    oldest_this_update: float | None  # epoch s of the oldest answer held; None: none held
    from_cache: int
    signed: int
    renewed_due: int
    renewed_changed: int

    @classmethod
    def of(
        cls, cache_answers: int, cache_bytes: int, oldest: float | None, counts: AnswerCounts
    ) -> ResponderFigures:
        return cls(cache_answers, cache_bytes, oldest, **asdict(counts))

    def cache_age(self, now: float) -> float | None:
        """Seconds since the oldest answer held was produced (its thisUpdate); None: none held."""
        if self.oldest_this_update is None:
            return None
        return max(now - self.oldest_this_update, 0.0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ResponderFigures | None:
        """The figures `text` holds; None for anything else (never raises: a reader skips it)."""
        try:
            document = json.loads(text)
        except ValueError:
            return None
        if not isinstance(document, dict):
            return None
        try:
            return cls(
                cache_answers=figure_count(document, "cache_answers"),
                cache_bytes=figure_count(document, "cache_bytes"),
                oldest_this_update=_optional_time(document, "oldest_this_update"),
                from_cache=figure_count(document, "from_cache"),
                signed=figure_count(document, "signed"),
                renewed_due=figure_count(document, "renewed_due"),
                renewed_changed=figure_count(document, "renewed_changed"),
            )
        except ValueError:
            return None


def _optional_time(document: Mapping[str, object], name: str) -> float | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} is not a time")
    return float(value)


def figures_by_responder(documents: Mapping[str, str]) -> dict[str, ResponderFigures]:
    """The figures of each responder whose document reads as figures (others are left out)."""
    found = {name: ResponderFigures.from_json(text) for name, text in documents.items()}
    return {name: figures for name, figures in found.items() if figures is not None}
