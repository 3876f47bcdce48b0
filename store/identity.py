"""Which CA a store's key space belongs to: recorded by the first signer, checked by the rest.

Key `P:ca` (see `store.keys`).
"""

from __future__ import annotations

from core.errors import ConfigurationError
from store.boundary import optional_text, translated
from store.results import ResultsStore


class CAIdentityRecord:
    """The CA identity recorded in one store's key space."""

    def __init__(self, store: ResultsStore) -> None:
        self._client = store.client
        self._key = store.keys.ca
        self._prefix = store.prefix

    @translated
    def recorded(self) -> str | None:
        """The recorded CA identity, or None before any signer started on this store."""
        return optional_text(self._client.hget(self._key, "id"))

    @translated
    def claim(self, identity: str, name: str) -> None:
        """Record `identity` on first use; refuse a store already holding another CA's records."""
        self._client.hsetnx(self._key, "id", identity)
        self._client.hsetnx(self._key, "name", name)
        recorded = self.recorded()
        if recorded != identity:
            holder = optional_text(self._client.hget(self._key, "name")) or "another CA"
            raise ConfigurationError(
                f"the store under prefix {self._prefix!r} belongs to {holder} "
                f"(key {str(recorded)[:16]}...), not to this CA (key {identity[:16]}...): give "
                "this CA its own queue and store prefix (CASIGN_QUEUE, CASIGN_STORE_PREFIX)"
            )
