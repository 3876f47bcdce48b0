"""Locks that expire: one holder at a time across processes, freed when the holder dies."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

import redis

from store.boundary import translated
from store.keys import KeySpace
from store.scripts import Lua, LuaScripts


@dataclass(frozen=True, slots=True)
class HeldLock:
    """A lock this process holds until `release`, or until it expires."""

    locks: Locks
    name: str
    token: str

    def release(self) -> bool:
        """Free the lock if this holder still has it; False when it had expired already."""
        return self.locks.release(self)


class Locks:
    """`P:lock:{name}` keys holding their holder's token (pid and a random part)."""

    def __init__(self, client: redis.Redis, keys: KeySpace, scripts: LuaScripts) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts

    @translated
    def acquire(self, name: str, seconds: int) -> HeldLock | None:
        """Take lock `name` for `seconds` unless someone holds it; None when someone does."""
        token = f"{os.getpid()}:{secrets.token_hex(8)}"
        if not self._client.set(self._keys.lock(name), token, nx=True, ex=seconds):
            return None
        return HeldLock(self, name, token)

    @translated
    def release(self, lock: HeldLock) -> bool:
        """Free `lock` if its holder still holds it (never a lock that passed to another)."""
        released = self._scripts[Lua.LOCK_RELEASE](
            keys=[self._keys.lock(lock.name)], args=[lock.token]
        )
        return bool(released)
