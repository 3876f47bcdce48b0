"""Certificate profiles: the guide's extension sections, read from `profiles.toml`."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
    ObjectIdentifier,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import ConfigurationError
from core.messages import describe_validation_error
from core.oids import NS_CERT_TYPE_OID, NS_COMMENT_OID

# In a CRL URL: the certificate's shard of a partitioned CRL (`crl_shards` in casign.toml).
SHARD_PLACEHOLDER = "{shard}"

# Netscape certificate type bits, most significant first (Netscape cert extensions spec).
_NS_CERT_TYPE_BITS = {
    "client": 0,
    "server": 1,
    "email": 2,
    "objsign": 3,
    "sslCA": 5,
    "emailCA": 6,
    "objCA": 7,
}
_EKU = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}
_KEY_USAGE = (
    "digitalSignature",
    "nonRepudiation",
    "keyEncipherment",
    "dataEncipherment",
    "keyAgreement",
)

# CA/Browser Forum Baseline Requirements 6.3.2 (ballot SC-081): maximum TLS subscriber validity.
_BR_VALIDITY_STEPS = (
    (date(2029, 3, 15), 47),
    (date(2027, 3, 15), 100),
    (date(2026, 3, 15), 200),
)
_BR_VALIDITY_BEFORE_2026 = 398

SanType = Literal["DNS", "IP", "email", "URI"]
KeyType = Literal["RSA", "EC", "Ed25519"]
ALL_KEY_TYPES: tuple[KeyType, ...] = ("RSA", "EC", "Ed25519")
LinterName = Literal["pkilint-br-serverauth", "pkilint-rfc5280", "off"]

# The subject attributes a profile may name, by the short names openssl and RFC 4514 use.
SUBJECT_ATTRIBUTE_OIDS: dict[str, ObjectIdentifier] = {
    "DC": NameOID.DOMAIN_COMPONENT,
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "postalCode": NameOID.POSTAL_CODE,
    "street": NameOID.STREET_ADDRESS,
    "O": NameOID.ORGANIZATION_NAME,
    "SN": NameOID.SURNAME,
    "GN": NameOID.GIVEN_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "title": NameOID.TITLE,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "UID": NameOID.USER_ID,
    "CN": NameOID.COMMON_NAME,
    "emailAddress": NameOID.EMAIL_ADDRESS,
}
# The guide's [ policy_loose ] (REFERENCE.md section 2), in its order: what `openssl ca` keeps.
GUIDE_SUBJECT_ATTRIBUTES = ["C", "ST", "L", "O", "OU", "CN", "emailAddress"]
# Let's Encrypt's limit; BR 7.1.2.7.12 sets none, but 1,500 names in one certificate is a mistake.
DEFAULT_MAX_SAN = 100

DEFAULT_BACKDATE_SECONDS = 5 * 60
MAX_BACKDATE_SECONDS = 24 * 3600


def baseline_max_days(today: date) -> int:
    """The longest TLS server validity the Baseline Requirements allow for a cert issued today."""
    for start, days in _BR_VALIDITY_STEPS:
        if today >= start:
            return days
    return _BR_VALIDITY_BEFORE_2026


class Profile(BaseModel):
    """One extension section plus the request rules that go with it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    default_days: int | Literal["baseline"] = 375
    max_days: int | Literal["baseline"] = 825
    digest: Literal["sha256", "sha384", "sha512"] = "sha256"
    common_name: Literal["fqdn", "any"] = "any"
    san_types: list[SanType] = ["DNS", "IP", "email", "URI"]
    san_required: bool = False
    san_from_common_name: bool = False
    wildcards: bool = True
    # The subject attributes a request may carry, in the order the certificate lists them.
    subject_attributes: list[str] = Field(default_factory=lambda: list(GUIDE_SUBJECT_ATTRIBUTES))
    # The CN must be one of the SAN values (BR 7.1.2.7.2: byte for byte).
    common_name_in_san: bool = False
    # Names that resolve in the public DNS only: a TLD of the public suffix list's ICANN
    # section, no reserved names, IP addresses that are globally routable (BR 7.1.2.7.12).
    public_names: bool = False
    max_san: int = Field(default=DEFAULT_MAX_SAN, ge=1, le=1000)
    key_types: list[KeyType] = Field(default_factory=lambda: list(ALL_KEY_TYPES))
    # The linter every to-be-signed certificate passes before the CA key signs it.
    lint: LinterName = "pkilint-rfc5280"
    key_usage: list[str] = Field(default_factory=list)
    key_usage_critical: bool = True
    extended_key_usage: list[str] = Field(default_factory=list)
    extended_key_usage_critical: bool = False
    ns_cert_type: list[str] = Field(default_factory=list)
    ns_comment: str | None = None
    subject_key_identifier: bool = True
    authority_key_identifier: Literal["keyid", "keyid,issuer", "keyid,issuer:always"] = "keyid"
    basic_constraints_critical: bool = False
    certificate_policies: list[str] = Field(default_factory=list)
    crl_distribution_points: list[str] = Field(default_factory=list)
    ocsp_urls: list[str] = Field(default_factory=list)
    ca_issuers_urls: list[str] = Field(default_factory=list)
    ocsp_no_check: bool = False
    # notBefore this many seconds before signing, for relying parties whose clocks run slow;
    # never before the intermediate's own notBefore.
    backdate_seconds: int = Field(default=DEFAULT_BACKDATE_SECONDS, ge=0, le=MAX_BACKDATE_SECONDS)
    # true: a notAfter past the intermediate's is cut to it; false: such a request is refused.
    clamp_not_after_to_ca: bool = False

    @model_validator(mode="after")
    def _known_names(self) -> Profile:
        for usage in self.key_usage:
            if usage not in _KEY_USAGE:
                raise ValueError(f"key_usage {usage!r} is not one of {', '.join(_KEY_USAGE)}")
        for purpose in self.extended_key_usage:
            if purpose not in _EKU:
                raise ValueError(f"extended_key_usage {purpose!r} is not one of {', '.join(_EKU)}")
        for kind in self.ns_cert_type:
            if kind not in _NS_CERT_TYPE_BITS:
                raise ValueError(
                    f"ns_cert_type {kind!r} is not one of {', '.join(_NS_CERT_TYPE_BITS)}"
                )
        for attribute in self.subject_attributes:
            if attribute not in SUBJECT_ATTRIBUTE_OIDS:
                raise ValueError(
                    f"subject_attributes {attribute!r} is not one of "
                    f"{', '.join(SUBJECT_ATTRIBUTE_OIDS)}"
                )
        if len(set(self.subject_attributes)) != len(self.subject_attributes):
            raise ValueError("subject_attributes names an attribute twice")
        if "CN" not in self.subject_attributes:
            raise ValueError("subject_attributes must include CN (every request names one)")
        if not self.key_types:
            raise ValueError("key_types is empty: no key could be certified")
        return self

    def validity_days(self, requested: int | None, today: date | None = None) -> tuple[int, int]:
        """(days to issue for, most days allowed) for a request asking for `requested`."""
        today = today or datetime.now(UTC).date()
        maximum = baseline_max_days(today) if self.max_days == "baseline" else self.max_days
        default = baseline_max_days(today) if self.default_days == "baseline" else self.default_days
        return (min(default, maximum) if requested is None else requested), maximum

    def fixed_extensions(self) -> list[tuple[x509.ExtensionType, bool]]:
        """The extensions that do not depend on the subject, in the guide's order."""
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), self.basic_constraints_critical),
        ]
        if self.ns_cert_type:
            extensions.append(
                (x509.UnrecognizedExtension(NS_CERT_TYPE_OID, self._ns_cert_type_der()), False)
            )
        if self.ns_comment is not None:
            extensions.append(
                (
                    x509.UnrecognizedExtension(NS_COMMENT_OID, _ia5_string_der(self.ns_comment)),
                    False,
                )
            )
        return extensions

    def usage_extensions(self, rsa_subject: bool) -> list[tuple[x509.ExtensionType, bool]]:
        """keyUsage and extendedKeyUsage, which the guide lists after the key identifiers.

        keyEncipherment is kept only for an RSA subject key: no other key type can do it.
        """
        extensions: list[tuple[x509.ExtensionType, bool]] = []
        chosen = set(self.key_usage)
        if not rsa_subject:
            chosen.discard("keyEncipherment")
        if chosen:
            extensions.append(
                (
                    x509.KeyUsage(
                        digital_signature="digitalSignature" in chosen,
                        content_commitment="nonRepudiation" in chosen,
                        key_encipherment="keyEncipherment" in chosen,
                        data_encipherment="dataEncipherment" in chosen,
                        key_agreement="keyAgreement" in chosen,
                        key_cert_sign=False,
                        crl_sign=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    self.key_usage_critical,
                )
            )
        if self.extended_key_usage:
            extensions.append(
                (
                    x509.ExtendedKeyUsage([_EKU[name] for name in self.extended_key_usage]),
                    self.extended_key_usage_critical,
                )
            )
        return extensions

    def location_extensions(
        self, shard: int | None = None
    ) -> list[tuple[x509.ExtensionType, bool]]:
        """id-pkix-ocsp-nocheck, certificatePolicies, cRLDistributionPoints and
        authorityInfoAccess, when configured: the extensions after the usages.

        `shard` replaces `{shard}` in the CRL URLs: the partitioned CRL that lists this certificate.
        """
        extensions: list[tuple[x509.ExtensionType, bool]] = []
        if self.ocsp_no_check:
            extensions.append((x509.OCSPNoCheck(), False))
        if self.certificate_policies:
            policies = [
                x509.PolicyInformation(ObjectIdentifier(oid), None)
                for oid in self.certificate_policies
            ]
            extensions.append((x509.CertificatePolicies(policies), False))
        if self.crl_distribution_points:
            points = [
                x509.DistributionPoint(
                    [x509.UniformResourceIdentifier(_shard_url(url, shard))], None, None, None
                )
                for url in self.crl_distribution_points
            ]
            extensions.append((x509.CRLDistributionPoints(points), False))
        access = [
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url)
            )
            for url in self.ocsp_urls
        ] + [
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(url)
            )
            for url in self.ca_issuers_urls
        ]
        if access:
            extensions.append((x509.AuthorityInformationAccess(access), False))
        return extensions

    def _ns_cert_type_der(self) -> bytes:
        bits = 0
        for kind in self.ns_cert_type:
            bits |= 0x80 >> _NS_CERT_TYPE_BITS[kind]
        unused = (bits & -bits).bit_length() - 1  # X.690 11.2.2: trailing zero bits are dropped
        return bytes([0x03, 0x02, unused, bits])


def _shard_url(url: str, shard: int | None) -> str:
    return url if shard is None else url.replace(SHARD_PLACEHOLDER, str(shard))


def _ia5_string_der(text: str) -> bytes:
    encoded = text.encode("ascii")
    if len(encoded) > 127:
        raise ValueError("ns_comment longer than 127 characters")
    return bytes([0x16, len(encoded)]) + encoded


def ocsp_responder_profile(digest: Literal["sha256", "sha384", "sha512"]) -> Profile:
    """The built-in profile of the delegated OCSP responder's certificate, never offered to a
    producer: the guide's `[ ocsp ]` section plus id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1)."""
    return Profile(
        name="ocsp",
        description="The guide's [ ocsp ] section: the delegated OCSP responder (RFC 6960 4.2.2.2)",
        default_days=30,
        max_days=30,
        digest=digest,
        common_name="any",
        san_types=[],
        # The responder's subject is the intermediate's with its own CN: whatever it holds.
        subject_attributes=list(SUBJECT_ATTRIBUTE_OIDS),
        authority_key_identifier="keyid",
        key_usage=["digitalSignature"],
        extended_key_usage=["OCSPSigning"],
        extended_key_usage_critical=True,
        ocsp_no_check=True,
        clamp_not_after_to_ca=True,
    )


class ProfileSet:
    """The profiles one CA offers, by name."""

    def __init__(self, profiles: dict[str, Profile]) -> None:
        self._profiles = profiles

    def __contains__(self, name: object) -> bool:
        return name in self._profiles

    def get(self, name: str) -> Profile | None:
        return self._profiles.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._profiles)

    def __iter__(self) -> Iterator[Profile]:
        return iter(self._profiles.values())

    @classmethod
    def from_toml(cls, text: str, source: str = "profiles.toml") -> ProfileSet:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None
        profiles: dict[str, Profile] = {}
        for name, table in document.get("profiles", {}).items():
            try:
                profiles[name] = Profile.model_validate({"name": name, **table})
            except ValidationError as exc:
                raise ConfigurationError(
                    f"{source}: profile {name!r}, {describe_validation_error(exc)}"
                ) from None
        if not profiles:
            raise ConfigurationError(f"{source}: no [profiles.NAME] table")
        return cls(profiles)

    @classmethod
    def load(cls, path: Path) -> ProfileSet:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"{path}: cannot read profiles ({exc.strerror})") from None
        return cls.from_toml(text, str(path))


_PROFILES_TEMPLATE = """\
# Certificate profiles of this CA. server_cert and usr_cert are the sections of the guide's
# intermediate/openssl.cnf; add a [profiles.NAME] table to offer another one.
#
# default_days / max_days: a number of days, or "baseline" for today's CA/Browser Forum maximum.
# common_name: "fqdn" (a domain name or IP address) or "any".
# san_types: which subjectAltName kinds a request may ask for (DNS, IP, email, URI).
# authority_key_identifier: "keyid", "keyid,issuer" or "keyid,issuer:always" as in openssl.cnf.
# backdate_seconds: notBefore is this long before the moment of signing, for clients whose clock
#   runs slow (default 300, at most 86400), but never before the intermediate's own notBefore.
# clamp_not_after_to_ca: true cuts a notAfter past the intermediate's notAfter to it; false (the
#   default) refuses such a request with request.validity_too_long, naming the CA's expiry date.
# ocsp_no_check: add id-pkix-ocsp-nocheck (for an OCSP responder's own certificate).
# subject_attributes: the subject attributes a request may carry (C, ST, L, O, OU, CN,
#   emailAddress, DC, UID, serialNumber, street, postalCode, title, GN, SN); the certificate's
#   subject lists them in this order, built from the checked values (subject.attribute_not_allowed).
# common_name_in_san: the CN must be one of the SAN values (subject.cn_not_in_san).
# public_names: names the public DNS resolves only: the TLD in the public suffix list's ICANN
#   section, no reserved names (.local, .internal, .home.arpa, ...), globally routable IP
#   addresses only (san.internal_name, san.ip_not_public).
# max_san: most subjectAltName values in one certificate (default 100; san.too_many).
# key_types: which subject keys the profile certifies: RSA, EC, Ed25519 (key.type_not_allowed).
# lint: the linter each to-be-signed certificate passes before the CA key signs it:
#   "pkilint-br-serverauth" (CA/B Forum TLS Baseline Requirements), "pkilint-rfc5280" (the
#   default) or "off"; any error refuses the request with lint.failed. The guide's two
#   profiles below ship with it off: casign's own checks refuse what pkilint's RFC 5280
#   validators would, and linting costs about 4 ms of CPU a certificate, five times the rest
#   of issuance (BENCHMARKS.md, the lint rows); set "pkilint-rfc5280" for a second opinion.

[profiles.server_cert]
description = "The guide's server_cert: a TLS server certificate"
default_days = 375
max_days = 825
common_name = "fqdn"
san_types = ["DNS", "IP"]
san_from_common_name = true
subject_attributes = ["C", "ST", "L", "O", "OU", "CN", "emailAddress"]
lint = "off"
ns_cert_type = ["server"]
ns_comment = "OpenSSL Generated Server Certificate"
authority_key_identifier = "keyid,issuer:always"
key_usage = ["digitalSignature", "keyEncipherment"]
extended_key_usage = ["serverAuth"]

[profiles.usr_cert]
description = "The guide's usr_cert: a client or e-mail certificate"
default_days = 375
max_days = 825
common_name = "any"
san_types = ["email", "DNS", "URI"]
wildcards = false
subject_attributes = ["C", "ST", "L", "O", "OU", "CN", "emailAddress"]
lint = "off"
ns_cert_type = ["client", "email"]
ns_comment = "OpenSSL Generated Client Certificate"
authority_key_identifier = "keyid,issuer"
key_usage = ["nonRepudiation", "digitalSignature", "keyEncipherment"]
extended_key_usage = ["clientAuth", "emailProtection"]

[profiles.tls_server]
description = "A TLS server certificate following the CA/Browser Forum Baseline Requirements"
default_days = "baseline"
max_days = "baseline"
common_name = "fqdn"
san_types = ["DNS", "IP"]
san_required = true
subject_attributes = ["C", "CN"]  # BR 7.1.2.7.2: a DV subject holds countryName and commonName only
common_name_in_san = true
public_names = true
max_san = 100
key_types = ["RSA", "EC"]  # BR 6.1.5: RSA or ECDSA P-256/P-384/P-521, no Ed25519
lint = "pkilint-br-serverauth"
subject_key_identifier = false
authority_key_identifier = "keyid"
basic_constraints_critical = true
key_usage = ["digitalSignature"]
extended_key_usage = ["serverAuth"]
certificate_policies = ["2.23.140.1.2.1"]  # CA/B Forum domain-validated
@LOCATIONS@"""

_NO_LOCATIONS = """\
# The Baseline Requirements want where revocation is published; `casign init --base-url URL`
# fills these in (the CRL that `casign crl` writes, the `casign ocsp` responder, the CA cert).
# Until they are set, the BR linter refuses every tls_server request (lint.failed names
# cabf.serverauth.subscriber.revocation_information_absent):
# crl_distribution_points = ["http://pki.example.com/intermediate.crl"]
# With crl_shards = N in casign.toml (partitioned CRLs), name the shard with {shard}:
# crl_distribution_points = ["http://pki.example.com/crl/intermediate-{shard}.crl"]
# ocsp_urls = ["http://pki.example.com/ocsp"]
# ca_issuers_urls = ["http://pki.example.com/intermediate.cer"]
"""


def default_profiles_toml(base_url: str | None = None) -> str:
    """The profiles file `casign init` writes; `base_url` fills tls_server's CRL/OCSP/issuer URLs."""
    if base_url is None:
        return _PROFILES_TEMPLATE.replace("@LOCATIONS@", _NO_LOCATIONS)
    base = base_url.rstrip("/")
    locations = (
        f'crl_distribution_points = ["{base}/intermediate.crl"]\n'
        f'ocsp_urls = ["{base}/ocsp"]\n'
        f'ca_issuers_urls = ["{base}/intermediate.cer"]\n'
    )
    return _PROFILES_TEMPLATE.replace("@LOCATIONS@", locations)


DEFAULT_PROFILES_TOML = default_profiles_toml()
