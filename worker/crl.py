"""The intermediate's CRL (RFC 5280 section 5), built from the store's revoked entries.

What the guide's `openssl ca -gencrl` makes with `crl_extensions = crl_ext`: issuer = the
intermediate's subject, lastUpdate now, nextUpdate `default_crl_days` later, the CRL number
and `authorityKeyIdentifier = keyid:always`; one entry per revoked certificate with its
revocation date and, when one was given, its reason code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core.errors import ConfigurationError
from core.files import PUBLIC_MODE, write_file_atomically
from core.index import format_serial
from core.revocation import parse_revocation_field
from store.revocations import RevocationStore
from worker.authority import SigningAuthority
from worker.cafolder import CAFolder

log = logging.getLogger("casign.crl")

DEFAULT_CRL_DAYS = 30  # the guide's `default_crl_days = 30`
CRL_FILE_NAME = "intermediate.crl.pem"  # the guide's `crl = $dir/crl/intermediate.crl.pem`
CRL_DER_NAME = "intermediate.crl.der"


def crl_days(folder: CAFolder) -> int:
    """`crl_days` from casign.toml, else the guide's 30."""
    configured = folder.settings().get("crl_days", DEFAULT_CRL_DAYS)
    if not isinstance(configured, int) or isinstance(configured, bool) or configured < 1:
        raise ConfigurationError(f"{folder.settings_path}: crl_days must be a positive integer")
    return configured


def ca_signature_digest(key: object) -> hashes.SHA256 | hashes.SHA384:
    """SHA-384 for a P-384 (or larger) key, as the CA certificates are signed; else SHA-256."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


@dataclass
class RevokedEntryCache:
    """RevokedCertificate objects by index line, kept between CRLs made by one process.

    Building an entry is most of a large CRL's cost; a revoked line never changes, so each
    is built once per process and the hourly CRL only pays for the new revocations.
    """

    entries: dict[str, x509.RevokedCertificate] = field(default_factory=dict)
    _reason_extensions: dict[x509.ReasonFlags, x509.Extension[x509.CRLReason]] = field(
        default_factory=dict
    )

    def entry(self, line: str) -> x509.RevokedCertificate:
        cached = self.entries.get(line)
        if cached is None:
            cached = self.entries[line] = self._build(line)
        return cached

    def _build(self, line: str) -> x509.RevokedCertificate:
        fields = line.split("\t")
        if len(fields) != 6 or fields[0] != "R" or not fields[2]:
            raise ValueError(f"not a revoked index line: {line!r}")
        info = parse_revocation_field(fields[2])
        extensions: list[x509.Extension[x509.ExtensionType]] = []
        if info.reason is not None:
            extensions.append(self._reason_extension(info.reason))
        if info.invalidity_date is not None:
            invalidity = x509.InvalidityDate(info.invalidity_date)
            extensions.append(x509.Extension(invalidity.oid, False, invalidity))
        # The constructor, not the set-once methods: one object per entry instead of four.
        return x509.RevokedCertificateBuilder(
            int(fields[3], 16), info.revoked_at, extensions
        ).build()

    def _reason_extension(self, reason: x509.ReasonFlags) -> x509.Extension[x509.CRLReason]:
        extension = self._reason_extensions.get(reason)
        if extension is None:
            value = x509.CRLReason(reason)
            extension = self._reason_extensions[reason] = x509.Extension(value.oid, False, value)
        return extension

    def forget_except(self, lines: set[str]) -> None:
        """Drop entries no longer revoked (a store wiped, say), so the cache cannot grow stale."""
        if len(self.entries) > len(lines):
            self.entries = {line: entry for line, entry in self.entries.items() if line in lines}


def build_crl(
    authority: SigningAuthority,
    revoked_lines: Iterable[str],
    number: int,
    now: datetime,
    days: int = DEFAULT_CRL_DAYS,
    cache: RevokedEntryCache | None = None,
) -> x509.CertificateRevocationList:
    """Sign a CRL listing every revoked line, numbered `number`, valid `days` from `now`."""
    cache = cache or RevokedEntryCache()
    lines = set(revoked_lines)
    cache.forget_except(lines)
    # Sorted by serial so two CRLs of the same entries list them in the same order.
    revoked = sorted((cache.entry(line) for line in lines), key=lambda e: e.serial_number)
    last_update = now.astimezone(UTC).replace(microsecond=0)
    aki = x509.AuthorityKeyIdentifier(authority.key_identifier, None, None)  # crl_ext: keyid:always
    extensions: list[x509.Extension[x509.ExtensionType]] = [
        x509.Extension(aki.oid, False, aki),
        x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
    ]
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=authority.intermediate.subject,
        last_update=last_update,
        next_update=last_update + timedelta(days=days),
        extensions=extensions,
        revoked_certificates=revoked,
    )
    return builder.sign(authority.key, ca_signature_digest(authority.key))


@dataclass(frozen=True)
class PublishedCRL:
    """A CRL made and published, with how long it took."""

    crl: x509.CertificateRevocationList
    number: int
    entries: int
    seconds: float

    @property
    def pem(self) -> bytes:
        return self.crl.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.crl.public_bytes(serialization.Encoding.DER)


def make_crl(
    authority: SigningAuthority,
    revocations: RevocationStore,
    days: int = DEFAULT_CRL_DAYS,
    now: datetime | None = None,
    cache: RevokedEntryCache | None = None,
) -> PublishedCRL:
    """Draw the next CRL number, build and sign the CRL, and publish it to the store."""
    started = time.perf_counter()
    lines = list(revocations.revoked_lines())
    number = revocations.next_crl_number()
    crl = build_crl(authority, lines, number, now or datetime.now(UTC), days, cache)
    revocations.publish_crl(crl, number)
    elapsed = time.perf_counter() - started
    log.info("CRL %d with %d entries made in %.2f s", number, len(lines), elapsed)
    return PublishedCRL(crl, number, len(lines), elapsed)


def write_crl_files(folder: CAFolder, published: PublishedCRL) -> Path:
    """Write `crl/intermediate.crl.pem` (and `.der`) and move OpenSSL's `crlnumber` past it."""
    crl_dir = folder.intermediate / "crl"
    crl_dir.mkdir(parents=True, exist_ok=True)
    pem_path = crl_dir / CRL_FILE_NAME
    write_file_atomically(pem_path, published.pem, PUBLIC_MODE)
    write_file_atomically(crl_dir / CRL_DER_NAME, published.der, PUBLIC_MODE)
    # So that `openssl ca -gencrl` on an exported index never reuses a number casign drew.
    counter = folder.intermediate / "crlnumber"
    try:
        on_disk = int(counter.read_text(encoding="ascii").strip() or "0", 16)
    except (OSError, ValueError):
        on_disk = 0
    if on_disk <= published.number:
        write_file_atomically(counter, format_serial(published.number + 1) + "\n", PUBLIC_MODE)
    return pem_path


def seed_crl_number(folder: CAFolder, revocations: RevocationStore) -> int:
    """Keep the store's CRL counter at or past the folder's `crlnumber` (the next to use)."""
    try:
        next_number = int(
            (folder.intermediate / "crlnumber").read_text(encoding="ascii").strip(), 16
        )
    except (OSError, ValueError):
        return revocations.raise_crl_number(1)
    return revocations.raise_crl_number(next_number)
