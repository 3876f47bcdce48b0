"""Which queues a signing worker served lately: what `casign status` and `submit` read."""

from __future__ import annotations

import time

import redis

from store.boundary import text, translated
from store.keys import KeySpace


class WorkerBeats:
    """`P:workers`: queue name -> when a worker serving it last started or took a batch."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self._client = client
        self._keys = keys

    @translated
    def note_active(self, queue: str) -> None:
        """Record that a worker serving `queue` is alive now."""
        self._client.hset(self._keys.workers, queue, f"{time.time():.3f}")

    @translated
    def last_active(self) -> dict[str, float]:
        """When a worker last started or took a batch (unix time), by the queue it serves."""
        raw = self._client.hgetall(self._keys.workers)
        return {text(queue): float(text(when)) for queue, when in raw.items()}
