"""The signer's memory of sealed messages: nonces seen (the replay cache) and refusal notes.

Keys `P:envelope:{producer}:{nonce}` and `P:authfail:{reply}` (see `store.keys`).
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
        self._client = store.client
        self._keys = store.keys

    @translated
    def seen(self, producer: str, nonce: str) -> bool:
        """Whether a message with this nonce was done before (a replay)."""
        return bool(self._client.exists(self._keys.envelope(producer, nonce)))

    @translated
    def remember(self, producer: str, nonce: str, expires_at: int) -> None:
        """Mark a message done; kept until shortly after its envelope expires."""
        ttl = max(1, int(expires_at - time.time()) + _REMEMBER_PAST_EXPIRY_SECONDS)
        self._client.set(self._keys.envelope(producer, nonce), "1", ex=ttl)

    @translated
    def note_refusal(self, reply_to: str, code: str, message: str) -> None:
        """One bounded note for whoever waits on `reply_to`: no reply, nothing under job ids."""
        note = json.dumps({"code": code, "message": message[:512]}, separators=(",", ":"))
        self._client.set(self._keys.auth_note(reply_to), note, ex=REFUSAL_NOTE_SECONDS)

    @translated
    def refusal_note(self, reply_to: str) -> tuple[str, str] | None:
        """The (code, message) of the last unauthenticated message naming `reply_to`, if any."""
        raw = self._client.get(self._keys.auth_note(reply_to))
        if raw is None:
            return None
        note = json.loads(text(raw))
        return str(note["code"]), str(note["message"])
