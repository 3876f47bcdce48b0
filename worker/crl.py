"""The intermediate's CRL (RFC 5280 section 5), built from the store's revoked entries.

What the guide's `openssl ca -gencrl` makes with `crl_extensions = crl_ext`: issuer = the
intermediate's subject, lastUpdate now, nextUpdate `crl_days` later (at most 10, BR 4.9.7),
the CRL number and `authorityKeyIdentifier = keyid:always`; one entry per revoked certificate
with its revocation date and, when one was given, its reason code.

Partitioned (`crl_shards = N` in casign.toml): one CRL per shard k, listing the revoked
certificates whose serial mod N is k, with a critical Issuing Distribution Point (RFC 5280
5.2.5) naming the URL those certificates carry as their CRL distribution point. All shards of
one run share one CRL number and one snapshot of the revoked set: a number drawn once per run
keeps `crlnumber` one counter, and the shards of a number together are exactly the full CRL
of that number (each shard's scope still sees strictly increasing numbers, RFC 5280 5.2.3).
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

from core.files import PUBLIC_MODE, write_file_atomically
from core.index import format_serial
from core.revocation import parse_revocation_field
from store.revocations import RevocationStore
from worker.authority import SigningAuthority
from worker.cafolder import CAFolder
from worker.crlsettings import DEFAULT_CRL_DAYS, crl_days, shard_idp_urls, shard_of

__all__ = ["DEFAULT_CRL_DAYS", "crl_days"]

log = logging.getLogger("casign.crl")

CRL_STEM = "intermediate"  # the guide's `crl = $dir/crl/intermediate.crl.pem`


def crl_file_stem(shard: int | None) -> str:
    """`intermediate` for the one CRL, `intermediate-K` for shard K (`crl/STEM.crl.pem|der`)."""
    return CRL_STEM if shard is None else f"{CRL_STEM}-{shard}"


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
    idp_urls: list[str] | None = None,
) -> x509.CertificateRevocationList:
    """Sign a CRL listing every revoked line, numbered `number`, valid `days` from `now`.

    `idp_urls`: a shard's CRL, scoped by a critical Issuing Distribution Point naming them.
    """
    cache = cache or RevokedEntryCache()
    lines = set(revoked_lines)
    # Sorted by serial so two CRLs of the same entries list them in the same order.
    revoked = sorted((cache.entry(line) for line in lines), key=lambda e: e.serial_number)
    last_update = now.astimezone(UTC).replace(microsecond=0)
    aki = x509.AuthorityKeyIdentifier(authority.key_identifier, None, None)  # crl_ext: keyid:always
    extensions: list[x509.Extension[x509.ExtensionType]] = [
        x509.Extension(aki.oid, False, aki),
        x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
    ]
    if idp_urls:
        # RFC 5280 5.2.5: critical; this CA issues end-entity certificates only.
        idp = x509.IssuingDistributionPoint(
            full_name=[x509.UniformResourceIdentifier(url) for url in idp_urls],
            relative_name=None,
            only_contains_user_certs=True,
            only_contains_ca_certs=False,
            only_some_reasons=None,
            indirect_crl=False,
            only_contains_attribute_certs=False,
        )
        extensions.append(x509.Extension(idp.oid, True, idp))
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
    """A CRL made and published (the one CRL, or shard `shard`), with how long it took."""

    crl: x509.CertificateRevocationList
    number: int
    entries: int
    seconds: float
    shard: int | None = None

    @property
    def pem(self) -> bytes:
        return self.crl.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.crl.public_bytes(serialization.Encoding.DER)


def partition(lines: Iterable[str], shards: int) -> list[list[str]]:
    """Revoked index lines by shard: the serial (fourth field, hex) mod `shards`."""
    parts: list[list[str]] = [[] for _ in range(shards)]
    for line in lines:
        parts[shard_of(int(line.split("\t", 4)[3], 16), shards)].append(line)
    return parts


def make_crls(
    authority: SigningAuthority,
    revocations: RevocationStore,
    days: int = DEFAULT_CRL_DAYS,
    now: datetime | None = None,
    cache: RevokedEntryCache | None = None,
) -> list[PublishedCRL]:
    """Draw the number and the revoked set in one step, sign and publish the CRL or each shard.

    One CRL when the authority has no `crl_shards`, else one per shard in shard order.
    """
    started = time.perf_counter()
    draw = revocations.draw_crl()
    moment = now or datetime.now(UTC)
    if cache is not None:
        cache.forget_except(set(draw.revoked_lines))
    shards = authority.crl_shards
    parts: list[tuple[int | None, list[str]]] = (
        [(None, draw.revoked_lines)]
        if shards is None
        else list(enumerate(partition(draw.revoked_lines, shards)))
    )
    published: list[PublishedCRL] = []
    for shard, lines in parts:
        part_started = time.perf_counter()
        idp = None if shard is None else shard_idp_urls(authority.profiles, shard)
        crl = build_crl(authority, lines, draw.number, moment, days, cache, idp)
        revocations.publish_crl(crl, draw.number, shard)
        published.append(
            PublishedCRL(crl, draw.number, len(lines), time.perf_counter() - part_started, shard)
        )
    log.info(
        "CRL %d with %d entries in %d part(s) made in %.2f s",
        draw.number,
        len(draw.revoked_lines),
        len(published),
        time.perf_counter() - started,
    )
    return published


def make_crl(
    authority: SigningAuthority,
    revocations: RevocationStore,
    days: int = DEFAULT_CRL_DAYS,
    now: datetime | None = None,
    cache: RevokedEntryCache | None = None,
) -> PublishedCRL:
    """`make_crls` for an authority without shards: its one CRL."""
    if authority.crl_shards is not None:
        raise ValueError("this CA has crl_shards: use make_crls")
    [published] = make_crls(authority, revocations, days, now, cache)
    return published


def write_crl_files(folder: CAFolder, published: list[PublishedCRL]) -> list[Path]:
    """Write `crl/STEM.crl.pem` and `.der` of each CRL, and move OpenSSL's `crlnumber` past them.

    STEM is `intermediate`, or `intermediate-K` for shard K; the PEM paths are returned.
    """
    crl_dir = folder.intermediate / "crl"
    crl_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for each in published:
        stem = crl_file_stem(each.shard)
        write_file_atomically(crl_dir / f"{stem}.crl.pem", each.pem, PUBLIC_MODE)
        write_file_atomically(crl_dir / f"{stem}.crl.der", each.der, PUBLIC_MODE)
        written.append(crl_dir / f"{stem}.crl.pem")
    # So that `openssl ca -gencrl` on an exported index never reuses a number casign drew.
    counter = folder.intermediate / "crlnumber"
    try:
        on_disk = int(counter.read_text(encoding="ascii").strip() or "0", 16)
    except (OSError, ValueError):
        on_disk = 0
    highest = max((each.number for each in published), default=0)
    if on_disk <= highest:
        write_file_atomically(counter, format_serial(highest + 1) + "\n", PUBLIC_MODE)
    return written


def seed_crl_number(folder: CAFolder, revocations: RevocationStore) -> int:
    """Keep the store's CRL counter at or past the folder's `crlnumber` (the next to use)."""
    try:
        next_number = int(
            (folder.intermediate / "crlnumber").read_text(encoding="ascii").strip(), 16
        )
    except (OSError, ValueError):
        return revocations.raise_crl_number(1)
    return revocations.raise_crl_number(next_number)
