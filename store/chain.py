"""What the store keeps about the CA itself: the chain handed out with every certificate."""

from __future__ import annotations

import redis

from store.boundary import optional_text, translated
from store.keys import KeySpace


class ChainRecord:
    """`P:chain`: the CA chain PEM, written by every worker at start."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self._client = client
        self._keys = keys

    @translated
    def get(self) -> str | None:
        return optional_text(self._client.get(self._keys.chain))

    @translated
    def set(self, chain_pem: str) -> None:
        self._client.set(self._keys.chain, chain_pem)
