"""Signed OCSP answers kept for reuse: a byte budget, least recently asked evicted first.

An answer is keyed by what it answers (each CertID's hash algorithm and serial, in request
order), remembers the index lines its statuses were read from (so a changed line can be
noticed), and is due for renewal at a time fixed when it was signed. The cache knows its oldest
answer (the earliest thisUpdate) for the responder's figures.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

AnswerKey = tuple[tuple[str, int], ...]  # (hash algorithm, serial) of each CertID, in order

# What an entry costs beyond its bytes: the dict slot, the key tuples, the object, its fields
# and its two heap items (tracemalloc, CPython 3.11: about 690 bytes for one CertID).
ENTRY_OVERHEAD_BYTES = 700


@dataclass(slots=True)
class CachedAnswer:
    """One signed answer, the index lines it says what they say, and its times (epoch s)."""

    der: bytes
    lines: tuple[str | None, ...]  # per CertID: the index line, None where never issued
    this_update: float
    next_update: float
    renew_at: float
    identity: object  # the ResponderIdentity that signed it
    asked: bool = False  # asked for since it was signed
    size: int = field(init=False)  # bytes it counts for against the budget
    says_unknown: bool = field(init=False)  # an issuance may change it
    says_good: bool = field(init=False)  # a revocation may change it

    def __post_init__(self) -> None:
        self.size = len(self.der) + sum(len(line or "") for line in self.lines)
        self.size += ENTRY_OVERHEAD_BYTES
        self.says_unknown = any(line is None for line in self.lines)
        self.says_good = any(line is not None and line[:1] != "R" for line in self.lines)


class AnswerCache:
    """Answers by key within `max_bytes`; only the responder's event loop thread touches it."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[AnswerKey, CachedAnswer] = OrderedDict()
        self._renewals: list[tuple[float, int, AnswerKey]] = []  # a heap; stale items skipped
        self._signings: list[tuple[float, int, AnswerKey]] = []  # by thisUpdate; the same
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: AnswerKey, now: float) -> CachedAnswer | None:
        """The answer for `key` while it is valid, marked as asked for; None otherwise."""
        entry = self._entries.get(key)
        if entry is None or now >= entry.next_update:
            return None
        self._entries.move_to_end(key)
        entry.asked = True
        return entry

    def peek(self, key: AnswerKey) -> CachedAnswer | None:
        """The entry for `key`, valid or not, without counting it as asked for."""
        return self._entries.get(key)

    def put(self, key: AnswerKey, entry: CachedAnswer) -> None:
        """Keep `entry` (replacing the one for `key`), evicting the least recently asked."""
        if entry.size > self.max_bytes:
            return
        self.discard(key)
        self._entries[key] = entry
        self.bytes += entry.size
        heapq.heappush(self._renewals, (entry.renew_at, next(self._order), key))
        heapq.heappush(self._signings, (entry.this_update, next(self._order), key))
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size
        if max(len(self._renewals), len(self._signings)) > 2 * len(self._entries) + 1024:
            self._rebuild_heaps()

    def discard(self, key: AnswerKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def clear(self) -> None:
        self._entries.clear()
        self._renewals.clear()
        self._signings.clear()
        self.bytes = 0

    def oldest_this_update(self) -> float | None:
        """The earliest thisUpdate (epoch s) of the answers held; None when none is."""
        signings = self._signings
        while signings:
            this_update, _, key = signings[0]
            entry = self._entries.get(key)
            if entry is not None and entry.this_update == this_update:
                return this_update
            heapq.heappop(signings)  # evicted, dropped or signed again since
        return None

    def keys(self) -> list[AnswerKey]:
        return list(self._entries)

    def items(self) -> Iterator[tuple[AnswerKey, CachedAnswer]]:
        return iter(list(self._entries.items()))

    def due(self, now: float, limit: int) -> list[tuple[AnswerKey, CachedAnswer]]:
        """Up to `limit` entries whose renewal time has come, soonest first (left in place)."""
        found: list[tuple[AnswerKey, CachedAnswer]] = []
        while self._renewals and self._renewals[0][0] <= now and len(found) < limit:
            renew_at, _, key = heapq.heappop(self._renewals)
            entry = self._entries.get(key)
            if entry is not None and entry.renew_at == renew_at:
                found.append((key, entry))
        return found

    def requeue(self, key: AnswerKey) -> None:
        """Make `key`'s entry due again (its renewal failed; the next look tries again)."""
        entry = self._entries.get(key)
        if entry is not None:
            heapq.heappush(self._renewals, (entry.renew_at, next(self._order), key))

    def _rebuild_heaps(self) -> None:
        self._renewals = [
            (entry.renew_at, next(self._order), key) for key, entry in self._entries.items()
        ]
        heapq.heapify(self._renewals)
        self._signings = [
            (entry.this_update, next(self._order), key) for key, entry in self._entries.items()
        ]
        heapq.heapify(self._signings)
