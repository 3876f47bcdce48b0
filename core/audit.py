"""The audit log: one JSON line per decision, each chained to the one before by a hash.

Lines are appended by the same Redis script that publishes what they record, which chains
them with `redis.sha1hex` (the only digest Redis scripts offer): entry i is stored as
`H_i JSON_i` with H_i = SHA-1(H_{i-1} + "\\n" + JSON_i) and H_0 = 40 zeros. A deleted, altered,
inserted or reordered line breaks every hash after it. It does not stop someone with write
access who rewrites the whole chain; export it to write-once storage for that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

GENESIS = "0" * 40
# json.dumps with separators builds a new encoder on every call; one serves every line.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def audit_line(
    event: str,
    *,
    job_id: str | None = None,
    requester: str | None = None,
    serial: str | None = None,
    profile: str | None = None,
    reason: str | None = None,
    when: datetime | None = None,
    jobs: int | None = None,
    claimed_by: str | None = None,
) -> str:
    """One decision (issued, refused, revoked) as a compact JSON line."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    entry = {
        "time": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event": event,
        "job_id": job_id,
        "requester": requester,
        "serial": serial,
        "profile": profile,
        "reason": reason,
        "jobs": jobs,  # how many jobs an unauthenticated batch carried (one line for all)
        "claimed_by": claimed_by,  # the producer an unauthenticated message claimed to be
    }
    return _COMPACT_JSON.encode({k: v for k, v in entry.items() if v is not None})


def chain_hash(previous: str, line: str) -> str:
    return hashlib.sha1((previous + "\n" + line).encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    """What `verify_chain` found: how many lines held, and the first that did not."""

    lines: int
    first_bad: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad is None


def verify_chain(stored: Iterable[str], head: str | None) -> ChainCheck:
    """Recompute the chain over stored `HASH JSON` entries and compare with the recorded head."""
    previous = GENESIS
    count = 0
    for count, entry in enumerate(stored, start=1):
        recorded, _, line = entry.partition(" ")
        if chain_hash(previous, line) != recorded:
            return ChainCheck(
                count - 1, count, "hash does not match: line altered, or one before it removed"
            )
        previous = recorded
    if (head or GENESIS) != previous:
        return ChainCheck(
            count, count + 1, "the chain's recorded head differs: lines were removed at the end"
        )
    return ChainCheck(count)
