"""Certificates and the OpenSSL index: read by serial or in issuance order, filled by adoption.

Published certificates arrive through `store.jobs` (the publish script); revocation changes
index lines through `store.revocations`; this module reads them, and writes only what an
adopted `openssl ca` folder brings.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import redis

from core.index import IndexEntry
from store.boundary import optional_text, text, translated, translated_iterator
from store.keys import KeySpace

ADOPTED = "adopted"  # the `serials` hash value of a serial issued before casign
_EXPORT_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class IndexMarks:
    """How far the index has grown: enough to tell, in one round trip, that nothing changed."""

    instance: str  # this key space's random id (`P:instance`)
    entries: int  # length of `P:index:order`
    revoked: int  # entries of `P:revoked`


@dataclass(frozen=True, slots=True)
class AdoptedEntry:
    """One `index.txt` line of an adopted folder, stored verbatim, with its certificate if found."""

    serial: str
    line: str
    certificate_pem: str | None
    revoked: bool


class CertificateIndex:
    """`P:certs`, `P:index` and `P:index:order`."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self._client = client
        self._keys = keys

    @translated
    def certificate(self, serial: str) -> str | None:
        """The PEM certificate of `serial` (hex, any case), if this CA issued it."""
        return optional_text(self._client.hget(self._keys.certs, serial.upper()))

    @translated
    def entry(self, serial: str) -> IndexEntry | None:
        """The index entry of `serial` (hex, any case), if there is one."""
        line = self._client.hget(self._keys.index, serial.upper())
        return IndexEntry.from_openssl_line(text(line)) if line else None

    @translated_iterator
    def lines(self) -> Iterator[str]:
        """Every index line in issuance order, read in chunks."""
        start = 0
        while True:
            serials = self._client.lrange(self._keys.index_order, start, start + _EXPORT_CHUNK - 1)
            if not serials:
                return
            yield from (
                text(line) for line in self._client.hmget(self._keys.index, serials) if line
            )
            start += len(serials)

    @translated
    def marks(self) -> IndexMarks:
        """This key space's id (made on first use), the entries in order and the revoked count."""
        keys = self._keys
        self._client.set(keys.instance, secrets.token_hex(16), nx=True)
        pipe = self._client.pipeline(transaction=False)
        pipe.get(keys.instance)
        pipe.llen(keys.index_order)
        pipe.hlen(keys.revoked)
        instance, entries, revoked = pipe.execute()
        return IndexMarks(text(instance), int(entries), int(revoked))

    @translated
    def lines_from(self, start: int) -> tuple[list[tuple[str, str, bool]], int]:
        """(serial, line, adopted) of the entries from position `start` of the issuance order
        on, and the position after the last one read; chunked."""
        found: list[tuple[str, str, bool]] = []
        position = start
        while True:
            serials = [
                text(serial)
                for serial in self._client.lrange(
                    self._keys.index_order, position, position + _EXPORT_CHUNK - 1
                )
            ]
            if not serials:
                return found, position
            pipe = self._client.pipeline(transaction=False)
            pipe.hmget(self._keys.index, serials)
            pipe.hmget(self._keys.serials, serials)
            lines, owners = pipe.execute()
            found.extend(
                (serial, text(line), owner == ADOPTED)
                for serial, line, owner in zip(serials, lines, owners, strict=True)
                if line
            )
            position += len(serials)

    @translated
    def count(self) -> int:
        """Index entries, issued here or adopted."""
        return int(self._client.hlen(self._keys.index))

    @translated
    def lines_of(self, serials: Sequence[str]) -> list[str | None]:
        """The stored index line of each of `serials` (hex as stored), None where there is none;
        one HMGET."""
        if not serials:
            return []
        return [optional_text(line) for line in self._client.hmget(self._keys.index, serials)]

    @translated
    def adopt(self, entries: Iterable[AdoptedEntry]) -> None:
        """Store adopted lines in one transaction: serial marked used, certificate, index line
        appended to the order, revoked ones listed for the CRL."""
        keys = self._keys
        pipe = self._client.pipeline(transaction=True)
        for entry in entries:
            pipe.hsetnx(keys.serials, entry.serial, ADOPTED)
            if entry.certificate_pem is not None:
                pipe.hset(keys.certs, entry.serial, entry.certificate_pem)
            pipe.hset(keys.index, entry.serial, entry.line)
            pipe.rpush(keys.index_order, entry.serial)
            if entry.revoked:
                pipe.hset(keys.revoked, entry.serial, entry.line)
        pipe.execute()

    @translated
    def record_adoption(self, folder: str, at: datetime) -> None:
        """Note which `openssl ca` folder was adopted into this store, and when."""
        self._client.hset(self._keys.adopted, mapping={"folder": folder, "at": at.isoformat()})
