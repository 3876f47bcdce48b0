"""Which CA a store's key space belongs to: recorded by the first signer, checked by the rest.

Key, under the store's prefix:
  ca    hash: id (SHA-256 of the intermediate's SubjectPublicKeyInfo, hex), name (its subject)
"""

from __future__ import annotations

from core.errors import ConfigurationError
from store.boundary import optional_text, translated
from store.results import ResultsStore


class CAIdentityRecord:
    """The CA identity recorded in one store's key space."""

    def __init__(self, store: ResultsStore) -> None:
        self.store = store
        self.client = store.client
        self.key = store.key("ca")

    @translated
    def recorded(self) -> str | None:
        """The recorded CA identity, or None before any signer started on this store."""
        return optional_text(self.client.hget(self.key, "id"))

    @translated
    def claim(self, identity: str, name: str) -> None:
        """Record `identity` on first use; refuse a store already holding another CA's records."""
        self.client.hsetnx(self.key, "id", identity)
        self.client.hsetnx(self.key, "name", name)
        recorded = self.recorded()
        if recorded != identity:
            holder = optional_text(self.client.hget(self.key, "name")) or "another CA"
            raise ConfigurationError(
                f"the store under prefix {self.store.prefix!r} belongs to {holder} "
                f"(key {str(recorded)[:16]}...), not to this CA (key {identity[:16]}...): give "
                "this CA its own queue and store prefix (--queue/CASIGN_QUEUE, CASIGN_STORE_PREFIX)"
            )
