"""Each OCSP responder's latest figures, under a key of its own that lapses when it stops writing.

A responder writes, at most once a second, `P:ocsp:figures:{responder}` (JSON, set with an
expiry) and its member of `P:ocsp:responders` (scored with the unix time that key expires),
and drops the members whose figures lapsed more than a minute ago; a reader takes the members
not yet lapsed and reads their keys in one MGET, so a responder that died leaves no figures
once its expiry passes. What the JSON holds is the responder's business (`ocsp.figures`).
"""

from __future__ import annotations

import time

import redis

from store.boundary import text, translated
from store.keys import KeySpace

# Members of P:ocsp:responders kept this long past their key's expiry, so that a reader whose
# clock is behind the writer's still finds them (the key itself is gone with its expiry).
LAPSED_MEMBER_GRACE_SECONDS = 60.0
MAX_RESPONDERS_READ = 1000


class ResponderFiguresBoard:
    """`P:ocsp:responders` and `P:ocsp:figures:{responder}`: written by responders, read by
    `casign metrics` and `casign top`."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self._client = client
        self._keys = keys

    @translated
    def publish(self, responder: str, figures_json: str, ttl_seconds: float) -> None:
        """Replace `responder`'s figures, to lapse `ttl_seconds` from now: one round trip."""
        now = time.time()
        pipeline = self._client.pipeline(transaction=False)
        pipeline.set(self._keys.ocsp_figures(responder), figures_json, px=int(ttl_seconds * 1000))
        pipeline.zadd(self._keys.ocsp_responders, {responder: now + ttl_seconds})
        pipeline.zremrangebyscore(
            self._keys.ocsp_responders, "-inf", now - LAPSED_MEMBER_GRACE_SECONDS
        )
        pipeline.execute()

    @translated
    def read(self) -> dict[str, str]:
        """The JSON figures of each responder whose figures have not lapsed, by its name."""
        names = [
            text(name)
            for name in self._client.zrangebyscore(
                self._keys.ocsp_responders,
                time.time() - LAPSED_MEMBER_GRACE_SECONDS,
                "+inf",
                start=0,
                num=MAX_RESPONDERS_READ,
            )
        ]
        if not names:
            return {}
        found = self._client.mget([self._keys.ocsp_figures(name) for name in names])
        return {name: text(value) for name, value in zip(names, found, strict=True) if value}
