"""EST clients' HTTP Basic passwords: stored as scrypt hashes, checked in constant time.

The stored form is `scrypt$LOG2N$R$P$SALT$HASH` (salt and hash in unpadded base64). scrypt is
slow on purpose (about 50 ms and 32 MiB at the defaults), so a password a client has proved is
remembered for a few minutes as an HMAC under a key that lives only in this process: a
keep-alive client sending the same header with every request costs one scrypt, not one each.
For a minute, the whole header that proved it is remembered the same way (`ProvenHeaders`), so
such a request costs one keyed hash, not the header's decoding and the HMAC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time

from core.errors import ConfigurationError

SCHEME = "scrypt"
LOG2_N = 15  # N = 32768, r = 8: 32 MiB per check (RFC 7914 section 2's interactive setting x2)
BLOCK_SIZE = 8
PARALLELISM = 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD_BYTES = 12
_MAX_LOG2_N = 20
_REMEMBER_SECONDS = 300.0
_REMEMBERED_MAX = 10_000
_HEADER_SECONDS = 60.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    memory = 128 * r * (2**log2_n) * p + 2**20  # RFC 7914: 128 * r * N bytes, plus headroom
    return hashlib.scrypt(
        password, salt=salt, n=2**log2_n, r=r, p=p, maxmem=memory, dklen=HASH_BYTES
    )


def hash_password(password: bytes) -> str:
    """The stored form of `password` under a fresh random salt."""
    if len(password) < MIN_PASSWORD_BYTES:
        raise ConfigurationError(
            f"an EST client password must be at least {MIN_PASSWORD_BYTES} bytes long"
        )
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, LOG2_N, BLOCK_SIZE, PARALLELISM)
    return f"{SCHEME}${LOG2_N}${BLOCK_SIZE}${PARALLELISM}${_b64(salt)}${_b64(digest)}"


def check_stored_form(stored: str) -> None:
    """Raise ConfigurationError when `stored` is not a hash this module can check."""
    _parse(stored)


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.split("$")
    try:
        if len(parts) != 6 or parts[0] != SCHEME:
            raise ValueError
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        raise ConfigurationError(
            "an EST client password is not of the form scrypt$LOG2N$R$P$SALT$HASH"
        ) from None
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= 32 and 1 <= p <= 16 and digest):
        raise ConfigurationError("an EST client password hash has out-of-range scrypt costs")
    return log2_n, r, p, salt, digest


def verify_password(password: bytes, stored: str) -> bool:
    """Whether `password` hashes to `stored` (compared in constant time)."""
    log2_n, r, p, salt, digest = _parse(stored)
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p), digest)


class ProvenPasswords:
    """Passwords recently proved, per client, kept only as an HMAC under a per-process key."""

    def __init__(self, seconds: float = _REMEMBER_SECONDS, limit: int = _REMEMBERED_MAX) -> None:
        self._key = secrets.token_bytes(32)
        self._seconds = seconds
        self._limit = limit
        self._proved: dict[tuple[str, bytes], float] = {}
        self._lock = threading.Lock()

    def tag(self, stored: str, password: bytes) -> bytes:
        """What this process remembers of a password: an HMAC under its own random key."""
        # The stored hash is part of the tag: a changed password forgets the old one at once.
        return hmac.new(self._key, stored.encode() + b"\0" + password, hashlib.sha256).digest()

    def remembered(self, client: str, password: bytes, stored: str) -> bool:
        """Whether this password was proved lately (cheap: no scrypt)."""
        tag = (client, self.tag(stored, password))
        with self._lock:
            until = self._proved.get(tag)
        return until is not None and until > time.monotonic()

    def check(self, client: str, password: bytes, stored: str) -> bool:
        """`verify_password`, answered from memory when this password was proved lately."""
        if self.remembered(client, password, stored):
            return True
        tag = (client, self.tag(stored, password))
        now = time.monotonic()
        if not verify_password(password, stored):
            return False
        with self._lock:
            if len(self._proved) >= self._limit:
                self._proved = {key: end for key, end in self._proved.items() if end > now}
                if len(self._proved) >= self._limit:
                    self._proved.clear()
            self._proved[tag] = now + self._seconds
        return True


class ProvenHeaders:
    """Authorization headers that proved a client lately, by that client's name.

    Each is kept only as a keyed BLAKE2b under a per-process key, for `seconds`: the exact
    header again is answered with its client, any other header is checked in full. Used from
    the event loop only; an `Admission` made for new settings starts with none.
    """

    def __init__(self, seconds: float = _HEADER_SECONDS, limit: int = _REMEMBERED_MAX) -> None:
        self._key = secrets.token_bytes(32)
        self._seconds = seconds
        self._limit = limit
        self._proved: dict[bytes, tuple[str, float]] = {}

    def _tag(self, header: str) -> bytes:
        return hashlib.blake2b(header.encode("ascii"), key=self._key, digest_size=32).digest()

    def proven_client(self, header: str) -> str | None:
        """The client `header` proved lately, else None."""
        if not header.isascii():  # a Basic header is base64: this one was never proved
            return None
        proved = self._proved.get(self._tag(header))
        if proved is None or proved[1] <= time.monotonic():
            return None
        return proved[0]

    def remember(self, header: str, client: str) -> None:
        """Remember that `header` (whose password was just checked) proved `client`."""
        if not header.isascii():
            return
        now = time.monotonic()
        if len(self._proved) >= self._limit:
            self._proved = {tag: held for tag, held in self._proved.items() if held[1] > now}
            if len(self._proved) >= self._limit:
                self._proved.clear()
        self._proved[self._tag(header)] = (client, now + self._seconds)
