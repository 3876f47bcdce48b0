"""The reply lists producers wait on: results pushed by the signer, popped by their producer."""

from __future__ import annotations

import redis

from store.boundary import text, translated
from store.keys import KeySpace
from store.scripts import Lua, LuaScripts

# Every push (here and in lua/publish.lua) keeps a reply list bounded (lua/reply_bound.lua):
# at most REPLY_LIST_MAX results, the oldest dropped (a dropped answer is still in its job's
# record, which `Producer.results` reads too), and a TTL set once, when the list is made, never
# extended by a later push.
REPLY_TTL_SECONDS = 24 * 3600
REPLY_LIST_MAX = 10_000


class ReplyLists:
    """`P:reply:{name}` lists of result JSON, one per producer (or request) that waits."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        scripts: LuaScripts | None = None,
        max_length: int = REPLY_LIST_MAX,
    ) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts or LuaScripts(client)
        self.max_length = max_length

    @translated
    def push(self, name: str, payload: str, ttl_seconds: int = REPLY_TTL_SECONDS) -> None:
        """Append one result JSON; a new list expires `ttl_seconds` from now (never extended),
        and a full one drops its oldest result."""
        self._scripts[Lua.REPLY_PUSH](
            keys=[self._keys.reply(name)], args=[payload, ttl_seconds, self.max_length]
        )

    @translated
    def pop_all(self, name: str, timeout: float, limit: int = 1000) -> list[str]:
        """Block up to `timeout` seconds for the first result, then take up to `limit` more."""
        key = self._keys.reply(name)
        first = self._client.blpop([key], timeout=max(timeout, 0.01))
        if first is None:
            return []
        raw = [text(first[1])]
        more = self._client.lpop(key, limit)
        if isinstance(more, list):
            raw.extend(text(item) for item in more)
        return raw

    @translated
    def pop_one(self, name: str, timeout: float) -> str | None:
        """The oldest result, waiting up to `timeout` seconds for one; None if none came."""
        popped = self._client.blpop([self._keys.reply(name)], timeout=max(timeout, 0.01))
        return None if popped is None else text(popped[1])
