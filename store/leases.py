"""Leases: each reserved job names the worker process holding it, and that process's lease
says it is alive.

A signing process (its id: host, pid and a start nonce) holds one lease, `P:lease:{id}`, a key
that expires unless renewed: one SET with PX per renewal, however many jobs the process holds.
Each job it reserves records it as `holder`. A job whose holder's lease is gone (the process
died, or froze past its lease) may be taken over, by recovery (`claim_expired`) or by a
delivery of its batch (`lua/reserve.lua`); a job under a live lease of another process is left
to it. Expiry is Redis's own clock, so the signers' clocks need not agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from store.acl import glob_escape
from store.boundary import text, translated
from store.keys import KeySpace
from store.scripts import Lua, LuaScripts


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    """Who reserves (a worker process's id; '' for an unleased caller) and for how long."""

    holder: str
    seconds: float

    @property
    def milliseconds(self) -> int:
        return max(1, round(self.seconds * 1000))


UNLEASED = LeaseTerms("", 0.0)


class Leases:
    """`P:lease:{worker}` keys, and the taking over of jobs whose holder's lease is gone."""

    def __init__(self, client: redis.Redis, keys: KeySpace, scripts: LuaScripts) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts

    @translated
    def renew(self, terms: LeaseTerms) -> None:
        """Hold (or take again) the lease for `terms.seconds` from now: one Redis call."""
        self._client.set(self._keys.lease(terms.holder), terms.holder, px=terms.milliseconds)

    @translated
    def release(self, holder: str, job_ids: list[str]) -> int:
        """Give up the jobs of `job_ids` still held by `holder`, so any recovery may take them."""
        if not job_ids:
            return 0
        released = self._scripts[Lua.LEASE_RELEASE](
            keys=[], args=[self._keys.job_stem, holder, *job_ids]
        )
        return int(released)

    @translated
    def holders(self) -> list[str]:
        """Every holder whose lease is alive now (one SCAN over the lease keys)."""
        stem = self._keys.lease_stem
        return [
            text(key).removeprefix(stem)
            for key in self._client.scan_iter(match=f"{glob_escape(stem)}*", count=1000)
        ]

    @translated
    def end(self, holder: str) -> bool:
        """End `holder`'s lease (its process is known gone); True if it was still there."""
        ended = self._scripts[Lua.LEASE_END](keys=[self._keys.lease(holder)], args=[holder])
        return bool(ended)

    @translated
    def alive(self, holder: str) -> bool:
        return bool(self._client.exists(self._keys.lease(holder)))

    @translated
    def holder_of(self, job_id: str) -> str | None:
        """The holder a reserved job names (None: none, or not reserved)."""
        found = self._client.hget(self._keys.job(job_id), "holder")
        return text(found) if found else None

    @translated
    def claim_expired(self, terms: LeaseTerms, limit: int) -> list[tuple[str, str]]:
        """Take over up to `limit` reserved jobs whose holder's lease is gone, in one script
        call; (job id, record) of each, now held under `terms`."""
        keys = self._keys
        flat = self._scripts[Lua.CLAIM_EXPIRED](
            keys=[keys.pending],
            args=[keys.job_stem, keys.lease_stem, terms.holder, terms.milliseconds, limit],
        )
        return [(text(flat[i]), text(flat[i + 1])) for i in range(0, len(flat), 2)]
