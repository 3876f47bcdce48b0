"""Who may enroll, for which labels, how fast (RFC 7030 3.3): the clients of `est.toml`.

A client proves who it is with HTTP Basic (its password, checked against the stored scrypt
hash) or with a TLS client certificate issued directly by one of the CAs its `issuers` list
(a manufacturer's or bootstrap CA). TLS has already checked that certificate's chain and
validity when the request arrives; here it is only matched to its client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from core.errors import ConfigurationError
from core.errors import RefusalCode as Code
from est.passwords import ProvenHeaders, ProvenPasswords, check_stored_form
from est.refusals import EstRefusal
from est.settings import ClientEntry, EstSettings

REALM = "casign EST"
CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
_MAX_AUTHORIZATION = 1024
_MATCHED_MAX = 10_000


@dataclass(frozen=True)
class EstClient:
    """An authenticated client: its name in `est.toml`, its entry, how it proved itself."""

    name: str
    entry: ClientEntry
    proof: str  # "password" | "certificate"


def load_client_certificates(path: str, client: str, what: str) -> list[x509.Certificate]:
    """The PEM certificates of `path`, which est.toml lists for `client` as `what` (issuer, key
    recipient); ConfigurationError naming both when the file cannot be read."""
    try:
        return x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"EST client {client!r}: cannot read {what} certificates from {path} ({exc})"
        ) from None


def _bad_credentials() -> EstRefusal:
    """The same answer whichever part was wrong: the name, the password, or the header."""
    return EstRefusal(
        Code.EST_BAD_CREDENTIALS,
        "the Basic credentials are not those of a listed client",
        headers=CHALLENGE,
    )


class PasswordChecks:
    """Proves passwords off the event loop: one scrypt per distinct password however many
    requests carry it at once, and at most `SCRYPT_AT_ONCE` running (32 MiB and tens of
    milliseconds of a core each)."""

    SCRYPT_AT_ONCE = 2

    def __init__(self) -> None:
        self._proven = ProvenPasswords()
        self._running: dict[tuple[str, bytes], asyncio.Future[bool]] = {}
        self._slots = asyncio.Semaphore(self.SCRYPT_AT_ONCE)

    async def check(self, client: str, password: bytes, stored: str) -> bool:
        if self._proven.remembered(client, password, stored):
            return True
        key = (client, self._proven.tag(stored, password))
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(self._prove(client, password, stored))
            self._running[key] = running
            running.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(running)

    async def _prove(self, client: str, password: bytes, stored: str) -> bool:
        async with self._slots:
            return await asyncio.to_thread(self._proven.check, client, password, stored)


class TokenBucket:
    """`rate` tokens a second up to `burst`; one per enrollment (kept in this process)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Admission:
    """Authenticates EST clients and holds each to its labels and rate."""

    def __init__(self, settings: EstSettings) -> None:
        self.clients = dict(settings.clients)
        self._passwords = PasswordChecks()
        self._headers = ProvenHeaders()
        self._buckets: dict[str, TokenBucket] = {}
        self._issuers: list[tuple[x509.Certificate, str]] = []
        owner: dict[bytes, str] = {}
        for name, entry in sorted(self.clients.items()):
            if entry.password is not None:
                check_stored_form(entry.password)
            for path in entry.issuers:
                for issuer in load_client_certificates(path, name, "issuer"):
                    key = issuer.public_bytes(serialization.Encoding.DER)
                    if owner.setdefault(key, name) != name:
                        raise ConfigurationError(
                            f"EST clients {owner[key]!r} and {name!r} list the same issuer "
                            f"{issuer.subject.rfc4514_string()}; a certificate must name one client"
                        )
                    self._issuers.append((issuer, name))
            if entry.rate_per_second is not None:
                burst = entry.burst or max(1, math.ceil(entry.rate_per_second))
                self._buckets[name] = TokenBucket(entry.rate_per_second, burst)
        self._matched: dict[bytes, str | None] = {}

    @property
    def issuer_certificates(self) -> list[x509.Certificate]:
        """Every CA a client certificate may come from: TLS trusts these for client auth."""
        return [issuer for issuer, _ in self._issuers]

    async def authenticate(
        self, authorization: str | None, peer: x509.Certificate | None
    ) -> EstClient:
        """The client behind HTTP Basic credentials, else behind the TLS client certificate."""
        if authorization:
            return await self._by_password(authorization)
        if peer is not None:
            name = self._by_certificate(peer)
            if name is not None:
                return EstClient(name, self.clients[name], "certificate")
        raise EstRefusal(
            Code.EST_UNAUTHENTICATED,
            "enrollment needs HTTP Basic credentials or a client certificate from a listed issuer",
            headers=CHALLENGE,
        )

    async def _by_password(self, authorization: str) -> EstClient:
        known = self._headers.proven_client(authorization)
        if known is not None:
            return EstClient(known, self.clients[known], "password")
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic" or len(encoded) > _MAX_AUTHORIZATION:
            raise _bad_credentials()
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise _bad_credentials() from None
        user, colon, password = decoded.partition(b":")
        name = user.decode("utf-8", errors="replace")
        entry = self.clients.get(name)
        if not colon or entry is None or entry.password is None:
            raise _bad_credentials()
        if not await self._passwords.check(name, password, entry.password):
            raise _bad_credentials()
        self._headers.remember(authorization, name)
        return EstClient(name, entry, "password")

    def _by_certificate(self, peer: x509.Certificate) -> str | None:
        fingerprint = peer.fingerprint(hashes.SHA256())
        if fingerprint in self._matched:
            return self._matched[fingerprint]
        found = None
        for issuer, name in self._issuers:
            if peer.issuer != issuer.subject:
                continue
            try:
                peer.verify_directly_issued_by(issuer)
            except (InvalidSignature, ValueError, TypeError):
                continue
            found = name
            break
        if len(self._matched) >= _MATCHED_MAX:
            self._matched.clear()
        self._matched[fingerprint] = found
        return found

    def admit(self, client: EstClient, label: str) -> None:
        """Refuse a label the client may not use, or an enrollment over its rate."""
        allowed = client.entry.labels
        if allowed is not None and label not in allowed:
            raise EstRefusal(
                Code.AUTH_PROFILE_NOT_ALLOWED,
                f"EST client {client.name!r} may not enroll for label {label!r}",
            )
        bucket = self._buckets.get(client.name)
        if bucket is None:
            return
        wait = bucket.take()
        if wait > 0:
            raise EstRefusal(
                Code.AUTH_RATE_LIMITED,
                f"EST client {client.name!r} is over its rate; retry later",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
