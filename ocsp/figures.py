"""What an OCSP responder counts, written to the store once a second for `casign metrics`.

Like the signer (`worker/figures.py`), the responder serves no figures itself: a task of its
event loop takes a snapshot (the cache belongs to that loop) every FLUSH_SECONDS and a thread of
its own writes it, whole, under the responder's own key (`store.ocsp_figures`), which lapses
`ttl_seconds` after the last write, so a responder that stops leaves no figures behind. The
counters are totals since the responder started; a new process under the same name starts
them over, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from core.errors import ConfigurationError
from store.ocsp_figures import ResponderFiguresBoard

log = logging.getLogger("casign.ocsp")

FLUSH_SECONDS = 1.0
DEFAULT_TTL_SECONDS = 10.0
# A TTL of at least two writes, so that one late write does not blank a live responder.
MIN_TTL_SECONDS = 2 * FLUSH_SECONDS


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
                cache_answers=_count(document, "cache_answers"),
                cache_bytes=_count(document, "cache_bytes"),
                oldest_this_update=_optional_time(document, "oldest_this_update"),
                from_cache=_count(document, "from_cache"),
                signed=_count(document, "signed"),
                renewed_due=_count(document, "renewed_due"),
                renewed_changed=_count(document, "renewed_changed"),
            )
        except ValueError:
            return None


def _count(document: Mapping[str, object], name: str) -> int:
    value = document.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} is not a count")
    return value


def _optional_time(document: Mapping[str, object], name: str) -> float | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} is not a time")
    return float(value)


def check_ttl(ttl_seconds: float) -> float:
    """`ttl_seconds`, refused below MIN_TTL_SECONDS (the figures would blink out between writes)."""
    if ttl_seconds < MIN_TTL_SECONDS:
        raise ConfigurationError(
            f"a figures TTL of {ttl_seconds:g} s is shorter than two writes of the responder's "
            f"figures ({MIN_TTL_SECONDS:g} s); give at least {MIN_TTL_SECONDS:g}"
        )
    return ttl_seconds


def responder_name(port: int) -> str:
    """`host:port`: one responder among those of a CA, stable across its restarts."""
    return f"{socket.gethostname()}:{port}"


class FiguresPublisher:
    """Writes `snapshot()` under `name` every FLUSH_SECONDS while `running()`."""

    def __init__(
        self,
        board: ResponderFiguresBoard,
        name: str,
        snapshot: Callable[[], ResponderFigures],
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
    ) -> None:
        self.board = board
        self.name = name
        self.snapshot = snapshot
        self.ttl_seconds = check_ttl(ttl_seconds)
        self._failing = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FiguresPublisher]:
        """A thread for the writes (a slow store never holds up answers), for the block."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="ocsp-figures")
        writer = asyncio.create_task(self._write_forever(pool), name="ocsp-figures")
        try:
            yield self
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            pool.shutdown(wait=True, cancel_futures=True)

    async def write_now(self, pool: ThreadPoolExecutor | None = None) -> None:
        """Write the figures of this moment; a failure is logged once per outage, never raised."""
        text = self.snapshot().to_json()  # taken on the event loop, which owns the cache
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(pool, self.board.publish, self.name, text, self.ttl_seconds)
        except Exception as exc:  # figures never stop answers; the next write tries again
            if not self._failing:
                log.warning("could not write the OCSP responder's figures to the store: %s", exc)
            self._failing = True
        else:
            self._failing = False

    async def _write_forever(self, pool: ThreadPoolExecutor) -> None:
        while True:
            await self.write_now(pool)
            await asyncio.sleep(FLUSH_SECONDS)


def figures_by_responder(documents: Mapping[str, str]) -> dict[str, ResponderFigures]:
    """The figures of each responder whose document reads as figures (others are left out)."""
    found = {name: ResponderFigures.from_json(text) for name, text in documents.items()}
    return {name: figures for name, figures in found.items() if figures is not None}
