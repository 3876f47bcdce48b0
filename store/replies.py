"""The reply lists producers wait on: results pushed by the signer, popped by their producer."""

from __future__ import annotations

import redis

from store.boundary import text, translated
from store.keys import KeySpace

REPLY_TTL_SECONDS = 24 * 3600


class ReplyLists:
    """`P:reply:{name}` lists of result JSON, one per producer (or request) that waits."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self._client = client
        self._keys = keys

    @translated
    def push(self, name: str, payload: str, ttl_seconds: int = REPLY_TTL_SECONDS) -> None:
        """Append one result JSON and keep the list for `ttl_seconds` from now."""
        key = self._keys.reply(name)
        pipe = self._client.pipeline(transaction=True)
        pipe.rpush(key, payload)
        pipe.expire(key, ttl_seconds)
        pipe.execute()

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
