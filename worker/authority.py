"""The signing authority one worker process holds: intermediate key, chain and profiles."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from core.errors import ConfigurationError
from core.signatures import IssuerKey
from keystore import SigningKey, load_signing_key
from worker.cafolder import CAFolder
from worker.crlsettings import check_shard_urls, crl_days, crl_shards, shard_of
from worker.profiles import Profile, ProfileSet
from worker.record_key import RecordKey
from worker.retention import DEFAULT_JOB_RETENTION_DAYS, job_retention_days

log = logging.getLogger("casign.authority")

SignatureHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512
EXPIRY_WARNING_DAYS = 30

_DIGESTS: dict[str, SignatureHash] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


def digest_algorithm(name: str) -> SignatureHash:
    return _DIGESTS[name]


Extensions = tuple[x509.Extension[x509.ExtensionType], ...]


def extensions_of(pairs: Iterable[tuple[x509.ExtensionType, bool]]) -> Extensions:
    """(value, critical) pairs as the `x509.Extension`s a certificate builder takes."""
    return tuple(x509.Extension(value.oid, critical, value) for value, critical in pairs)


@dataclass(frozen=True)
class ProfileExtensions:
    """A profile's extensions that do not depend on the subject, built once per authority."""

    before_key_ids: Extensions
    authority_key_identifier: x509.Extension[x509.AuthorityKeyIdentifier]
    usage_rsa: Extensions
    usage_other: Extensions
    # One entry, or one per CRL shard (the CRL distribution point names the shard).
    locations_by_shard: tuple[Extensions, ...]

    def locations_for(self, serial: int) -> Extensions:
        """The location extensions of the certificate with `serial`."""
        if len(self.locations_by_shard) == 1:
            return self.locations_by_shard[0]
        return self.locations_by_shard[shard_of(serial, len(self.locations_by_shard))]


@dataclass(frozen=True)
class SigningAuthority:
    """The intermediate CA as a worker uses it; load once per process (key loading is slow).

    `record_key` seals the issuance records this signer stores and opens the ones it reads back.
    """

    intermediate: x509.Certificate
    root: x509.Certificate
    chain_pem: str
    key: SigningKey
    profiles: ProfileSet
    record_key: RecordKey
    crl_shards: int | None = None
    job_retention_days: int = DEFAULT_JOB_RETENTION_DAYS  # casign.toml; 0 keeps them for ever
    _extensions: dict[str, tuple[Profile, ProfileExtensions]] = field(
        default_factory=dict, compare=False
    )
    _profile_digests: dict[str, tuple[Profile, str]] = field(default_factory=dict, compare=False)

    @classmethod
    def load(
        cls,
        folder: CAFolder,
        key_uri: str | None = None,
        expiry_warning_days: int = EXPIRY_WARNING_DAYS,
    ) -> SigningAuthority:
        """Open the CA folder's certificates, profiles and intermediate key, and check the chain.

        This is the start-up check: an expired intermediate is refused, one that expires within
        `expiry_warning_days` is logged as a warning.
        """
        intermediate = folder.intermediate_certificate()
        root = folder.root_certificate()
        crl_days(folder)  # refused here, at start, rather than at the first CRL
        shards = crl_shards(folder)
        profiles = ProfileSet.load(folder.profiles_path)
        check_shard_urls(profiles, shards, str(folder.profiles_path))
        key = load_signing_key(key_uri or folder.intermediate_key_uri())
        authority = cls(
            intermediate=intermediate,
            root=root,
            chain_pem=folder.chain_pem(),
            key=key,
            profiles=profiles,
            crl_shards=shards,
            job_retention_days=job_retention_days(folder),
            record_key=folder.record_key(),
        )
        now = datetime.now(UTC)
        authority.check_expiry(now, timedelta(days=expiry_warning_days))
        authority.check_own_chain(now)
        return authority

    def check_expiry(self, now: datetime, warn_within: timedelta) -> None:
        """Refuse (ConfigurationError) an expired intermediate; warn when it ends within `warn_within`."""
        expires = self.intermediate.not_valid_after_utc
        if now > expires:
            raise ConfigurationError(self._expired_message())
        if expires - now <= warn_within:
            log.warning(
                "the intermediate CA certificate expires on %s UTC, in %d day(s); renew it before "
                "then (certificates that would outlive it are refused or clamped)",
                f"{expires:%Y-%m-%d %H:%M}",
                (expires - now).days,
            )

    def _expired_message(self) -> str:
        return (
            f"the intermediate CA certificate expired on "
            f"{self.intermediate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "renew it: an expired CA signs nothing"
        )

    def check_own_chain(self, now: datetime) -> None:
        """Refuse to sign with a key that is not the intermediate's, or a broken chain."""
        if now > self.intermediate.not_valid_after_utc:
            raise ConfigurationError(self._expired_message())
        public = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if public != self.intermediate_public_key_der:
            raise ConfigurationError("the intermediate key does not match intermediate.cert.pem")
        try:
            self.intermediate.verify_directly_issued_by(self.root)
        except Exception as exc:
            raise ConfigurationError(
                f"intermediate.cert.pem is not signed by the root in the chain ({exc})"
            ) from None
        for certificate in (self.intermediate, self.root):
            if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
                raise ConfigurationError(
                    f"CA certificate {certificate.subject.rfc4514_string()} is not valid now"
                )

    @cached_property
    def intermediate_public_key_der(self) -> bytes:
        return self.intermediate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @cached_property
    def issuer_key(self) -> IssuerKey:
        """The intermediate's public key, parsed once, to check every certificate it signs."""
        return IssuerKey(self.intermediate)

    @cached_property
    def common_names(self) -> frozenset[str]:
        """The root's and the intermediate's CNs, which no leaf may take."""
        return frozenset(
            str(attribute.value)
            for certificate in (self.root, self.intermediate)
            for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        )

    @cached_property
    def key_identifier(self) -> bytes:
        try:
            return self.intermediate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value.digest
        except x509.ExtensionNotFound:
            return x509.SubjectKeyIdentifier.from_public_key(self.intermediate.public_key()).digest

    def extensions_for(self, profile: Profile) -> ProfileExtensions:
        cached = self._extensions.get(profile.name)
        if cached is not None and (cached[0] is profile or cached[0] == profile):
            return cached[1]
        if profile.authority_key_identifier == "keyid,issuer:always":
            # openssl.cnf `keyid,issuer:always`: the issuer's issuer name and serial as well.
            aki = x509.AuthorityKeyIdentifier(
                key_identifier=self.key_identifier,
                authority_cert_issuer=[x509.DirectoryName(self.intermediate.issuer)],
                authority_cert_serial_number=self.intermediate.serial_number,
            )
        else:
            # `keyid,issuer` adds the issuer only when no key id can be had; ours always has one.
            aki = x509.AuthorityKeyIdentifier(self.key_identifier, None, None)
        built = ProfileExtensions(
            before_key_ids=extensions_of(profile.fixed_extensions()),
            authority_key_identifier=x509.Extension(aki.oid, False, aki),
            usage_rsa=extensions_of(profile.usage_extensions(rsa_subject=True)),
            usage_other=extensions_of(profile.usage_extensions(rsa_subject=False)),
            locations_by_shard=tuple(
                extensions_of(profile.location_extensions(shard))
                for shard in (range(self.crl_shards) if self.crl_shards else [None])
            ),
        )
        self._extensions[profile.name] = (profile, built)
        return built

    def profile_digest(self, profile: Profile) -> str:
        """SHA-256 (hex) of `profile`'s canonical JSON, which each issuance record names it by;
        computed once per profile."""
        cached = self._profile_digests.get(profile.name)
        if cached is None or cached[0] is not profile:
            canonical = json.dumps(
                profile.model_dump(mode="json"),
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=True,
            )
            cached = (profile, hashlib.sha256(canonical.encode()).hexdigest())
            self._profile_digests[profile.name] = cached
        return cached[1]


def load_authority(
    ca_dir: Path, key_uri: str | None = None, expiry_warning_days: int = EXPIRY_WARNING_DAYS
) -> SigningAuthority:
    """The CA folder's authority, after the start-up checks of `SigningAuthority.load`."""
    return SigningAuthority.load(CAFolder(ca_dir), key_uri, expiry_warning_days)
