"""The signer's memory of sealed messages: nonces seen (the replay cache) and refusal notes.

Keys, under the store's prefix:
  envelope:{producer}:{nonce}   string, set once a sealed message is done, until it expires
  authfail:{reply_to}           string: JSON code and message of the last unauthenticated
                                message naming that reply list (one key, overwritten, 5 min)
"""

from __future__ import annotations

import json
import time

from store.boundary import text, translated
from store.results import ResultsStore

REFUSAL_NOTE_SECONDS = 300
# A nonce is remembered a little past its envelope's expiry, so clock skew cannot reopen it.
_REMEMBER_PAST_EXPIRY_SECONDS = 120


class EnvelopeLedger:
    """Which sealed messages the signer has done, and why unauthenticated ones were refused."""

    def __init__(self, store: ResultsStore) -> None:
        self.store = store
        self.client = store.client

    def _nonce_key(self, producer: str, nonce: str) -> str:
        return self.store.key("envelope", producer, nonce)

    @translated
    def seen(self, producer: str, nonce: str) -> bool:
        """Whether a message with this nonce was done before (a replay)."""
        return bool(self.client.exists(self._nonce_key(producer, nonce)))

    @translated
    def remember(self, producer: str, nonce: str, expires_at: int) -> None:
        """Mark a message done; kept until shortly after its envelope expires."""
        ttl = max(1, int(expires_at - time.time()) + _REMEMBER_PAST_EXPIRY_SECONDS)
        self.client.set(self._nonce_key(producer, nonce), "1", ex=ttl)

    @translated
    def note_refusal(self, reply_to: str, code: str, message: str) -> None:
        """One bounded note for whoever waits on `reply_to`: no reply, nothing under job ids."""
        note = json.dumps({"code": code, "message": message[:512]}, separators=(",", ":"))
        self.client.set(self.store.key("authfail", reply_to), note, ex=REFUSAL_NOTE_SECONDS)

    @translated
    def refusal_note(self, reply_to: str) -> tuple[str, str] | None:
        """The (code, message) of the last unauthenticated message naming `reply_to`, if any."""
        raw = self.client.get(self.store.key("authfail", reply_to))
        if raw is None:
            return None
        note = json.loads(text(raw))
        return str(note["code"]), str(note["message"])
