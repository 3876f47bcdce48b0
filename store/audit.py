"""The audit log as stored: read oldest first, and its head, for `casign audit verify`.

Lines are only ever appended by `lua/audit.lua`, inside the publish and revoke scripts, in the
same step as the decision they record; `core.audit` formats and verifies them.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis

from store.boundary import optional_text, text, translated, translated_iterator
from store.keys import KeySpace

_READ_CHUNK = 5000


class AuditLog:
    """`P:audit` (the `HASH JSON` entries) and `P:audit:head`."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self._client = client
        self._keys = keys

    @translated_iterator
    def entries(self) -> Iterator[str]:
        """The stored `HASH JSON` entries, oldest first, read in chunks."""
        start = 0
        while True:
            chunk = self._client.lrange(self._keys.audit, start, start + _READ_CHUNK - 1)
            if not chunk:
                return
            yield from (text(entry) for entry in chunk)
            start += len(chunk)

    @translated
    def head(self) -> str | None:
        """The hash of the newest entry, None before the first."""
        return optional_text(self._client.get(self._keys.audit_head))
