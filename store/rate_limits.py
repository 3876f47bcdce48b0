"""Producers' token buckets, kept in Redis so every worker process draws from the same one.

How fast a producer may go is the signer's policy (`worker/access.py`); this module only keeps
the buckets (`lua/rate_take.lua`).
"""

from __future__ import annotations

import time

import redis

from store.boundary import translated
from store.keys import KeySpace
from store.scripts import Lua, LuaScripts


class RateLimits:
    """`P:rate:{producer}` buckets: refilled at a rate, holding at most a burst."""

    def __init__(self, client: redis.Redis, keys: KeySpace, scripts: LuaScripts) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts

    @translated
    def take(self, producer: str, rate_per_second: float, burst: int, wanted: int) -> int:
        """Take up to `wanted` tokens from `producer`'s bucket; how many it had to give."""
        granted = self._scripts[Lua.RATE_TAKE](
            keys=[self._keys.rate(producer)],
            args=[rate_per_second, burst, f"{time.time():.6f}", wanted],
        )
        return int(granted)
