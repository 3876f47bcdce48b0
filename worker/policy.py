"""CSR policy: every check a request must pass before a serial is drawn for it."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtensionOID, NameOID

from core.errors import RefusalCode as Code
from core.errors import Rejected
from core.messages import SignRequest
from core.signatures import csr_signature_valid
from worker.csr_der import is_ec_public_key, rsa_public_exponent
from worker.key_quality import check_key_quality
from worker.profiles import KeyType, Profile, ProfileSet
from worker.subject import (
    attribute_name,
    build_subject,
    canonical_common_name,
    check_attributes_allowed,
    check_country,
)
from worker.web_names import (
    IPAddress,
    check_dns_name,
    check_public_dns_name,
    check_public_ip_address,
    check_wildcard_base,
    ip_address_or_none,
    is_dns_name,
)

MAX_CSR_BYTES = 64 * 1024
MAX_RSA_BITS = 8192
ALLOWED_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
# NIST SP 800-89 5.3.3 / CA/B Forum BR 6.1.6: odd, at least 65537 (3 and 1 are refused).
MIN_RSA_EXPONENT = 65537
MAX_RSA_EXPONENT = 2**256

# RFC 5280 Appendix A upper bounds (ub-*), in characters.
_MAX_VALUE_LENGTH = {
    NameOID.COMMON_NAME: 64,
    NameOID.ORGANIZATION_NAME: 64,
    NameOID.ORGANIZATIONAL_UNIT_NAME: 64,
    NameOID.LOCALITY_NAME: 128,
    NameOID.STATE_OR_PROVINCE_NAME: 128,
    NameOID.EMAIL_ADDRESS: 255,
    NameOID.SERIAL_NUMBER: 64,
}
_DEFAULT_MAX_VALUE_LENGTH = 128
# RFC 5280 4.1.2.4: DirectoryString choices, plus IA5String for emailAddress and DC. An OCTET
# STRING "CN" decodes to text in cryptography and would be copied into the certificate as is.
_TEXT_TYPES = frozenset(
    {
        _ASN1Type.UTF8String,
        _ASN1Type.PrintableString,
        _ASN1Type.BMPString,
        _ASN1Type.T61String,
        _ASN1Type.UniversalString,
        _ASN1Type.IA5String,
    }
)
# Attributes whose ASN.1 type is IA5String (RFC 5280 A.1, RFC 4519 2.4): ASCII only.
_IA5_ATTRIBUTES = frozenset({NameOID.EMAIL_ADDRESS, NameOID.DOMAIN_COMPONENT})
# A wildcard label where a profile refuses wildcards: `*.example.com`, `a.*.example.com`.
_WILDCARD_LABEL = re.compile(r"(?:^|\.)\*(?:\.|$)")
# A value like `Alice/CN=Root CA` would read as a second attribute in a one-line subject.
_FORGED_ATTRIBUTE = re.compile(r"/\s*[A-Za-z][A-Za-z0-9.]*\s*=")
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@([A-Za-z0-9.-]{1,253})$")
_HANDLED_REQUEST_EXTENSIONS = frozenset(
    {
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
    }
)
_SAN_PREFIXES = {"DNS": "DNS", "IP": "IP", "IP ADDRESS": "IP", "EMAIL": "email", "URI": "URI"}
# The general-name kinds a certificate of ours may hold, by the prefix `parse_san_text` reads.
_SAN_KINDS: dict[type[x509.GeneralName], str] = {
    x509.DNSName: "DNS",
    x509.IPAddress: "IP",
    x509.RFC822Name: "email",
    x509.UniformResourceIdentifier: "URI",
}


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """A request that passed policy: its parsed CSR, profile, names and validity; `subject` is
    the subject the certificate will carry, built from the checked values."""

    request: SignRequest
    csr: x509.CertificateSigningRequest
    subject: x509.Name
    public_key: CertificatePublicKeyTypes
    profile: Profile
    subject_alternative_names: tuple[x509.GeneralName, ...]
    days: int


def check_request(
    request: SignRequest, profiles: ProfileSet, ca_common_names: Iterable[str]
) -> CheckedRequest:
    """Apply the CSR policy to `request`; raise `Rejected` with the first reason found."""
    profile = profiles.get(request.profile)
    if profile is None:
        raise Rejected(
            Code.PROFILE_UNKNOWN,
            f"profile {request.profile!r} is not offered (choose from {', '.join(profiles.names)})",
        )
    days = check_validity(profile, request.days)
    csr = parse_csr(request.csr_pem)
    public_key = read_public_key(csr)
    check_public_key(public_key)
    check_key_type_allowed(public_key, profile)
    check_key_quality(public_key)
    if not csr_signature_valid(csr, public_key):
        raise Rejected(Code.CSR_BAD_SIGNATURE, "the CSR's signature does not verify with its key")
    requested_subject = read_subject(csr)
    common_name = check_subject(requested_subject, profile, ca_common_names)
    requested = check_requested_extensions(csr)
    names = resolve_subject_alternative_names(profile, common_name, requested, request.san)
    check_common_name_in_names(common_name, names, profile)
    subject = build_subject(requested_subject, profile)
    return CheckedRequest(request, csr, subject, public_key, profile, names, days)


def check_validity(profile: Profile, requested: int | None) -> int:
    days, maximum = profile.validity_days(requested)
    if days <= 0:
        raise Rejected(Code.VALIDITY_INVALID, f"days must be a positive number, not {days}")
    if days > maximum:
        raise Rejected(
            Code.VALIDITY_TOO_LONG,
            f"days {days} exceeds the {profile.name} profile's maximum of {maximum}",
        )
    return days


def parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    data = csr_pem.encode("utf-8", errors="replace")
    if len(data) > MAX_CSR_BYTES:
        raise Rejected(
            Code.CSR_TOO_LARGE,
            f"the CSR is {len(data)} bytes; at most {MAX_CSR_BYTES} are accepted",
        )
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
        raise Rejected(
            Code.CSR_MALFORMED, "the CSR is not PEM with a 'BEGIN CERTIFICATE REQUEST' label"
        )
    try:
        return x509.load_pem_x509_csr(data)
    except (ValueError, x509.InvalidVersion):
        raise Rejected(Code.CSR_MALFORMED, "the CSR's PEM or DER encoding is broken") from None


# cryptography decodes a CSR's key, subject and extensions lazily, on first access, and a
# hostile encoding there raises ValueError, KeyError (an ASN.1 string type it has no name for)
# or UnsupportedAlgorithm rather than failing in load_pem_x509_csr.


def read_public_key(csr: x509.CertificateSigningRequest) -> CertificatePublicKeyTypes:
    try:
        return csr.public_key()
    except UnsupportedAlgorithm:
        raise Rejected(
            Code.KEY_UNSUPPORTED, "the CSR's subjectPublicKeyInfo algorithm is not supported"
        ) from None
    except ValueError:
        der = csr.public_bytes(serialization.Encoding.DER)
        exponent = rsa_public_exponent(der)
        if exponent is not None and (exponent % 2 == 0 or exponent < MIN_RSA_EXPONENT):
            raise Rejected(
                Code.KEY_RSA_EXPONENT,
                f"the RSA public exponent {exponent} is refused; use 65537",
            ) from None
        if is_ec_public_key(der):
            # cryptography checks the point as it loads it (SEC 1 3.2.2.1) and refuses one
            # that is off its curve or the point at infinity.
            raise Rejected(
                Code.KEY_EC_POINT,
                "the CSR's EC public key is not a valid point of its curve (SEC 1 3.2.2.1)",
            ) from None
        raise Rejected(
            Code.CSR_MALFORMED, "the CSR's subjectPublicKeyInfo does not parse"
        ) from None


def read_subject(csr: x509.CertificateSigningRequest) -> x509.Name:
    try:
        return csr.subject
    except (ValueError, KeyError):
        raise Rejected(
            Code.CSR_MALFORMED,
            "the CSR's subject does not parse (a value's string type or encoding)",
        ) from None


def check_public_key(key: object) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        bits, exponent = key.key_size, key.public_numbers().e
        if bits < 2048 or bits > MAX_RSA_BITS or bits % 8:
            raise Rejected(
                Code.KEY_RSA_TOO_SMALL,
                f"the RSA key has {bits} bits; 2048 to {MAX_RSA_BITS}, a multiple of 8, are accepted",
            )
        if exponent % 2 == 0 or not MIN_RSA_EXPONENT <= exponent < MAX_RSA_EXPONENT:
            raise Rejected(
                Code.KEY_RSA_EXPONENT,
                f"the RSA public exponent {exponent} is refused; use 65537",
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise Rejected(
                Code.KEY_EC_CURVE,
                f"the EC key is on {key.curve.name}; P-256, P-384 and P-521 are accepted",
            )
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise Rejected(
            Code.KEY_UNSUPPORTED,
            f"the CSR's key type {type(key).__name__.removeprefix('_')} is not RSA, ECDSA or Ed25519",
        )


def key_type_of(key: object) -> KeyType | None:
    """The profile's name for a subject key's type (`RSA`, `EC`, `Ed25519`)."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return None


def check_key_type_allowed(key: object, profile: Profile) -> None:
    """Refuse a key type the profile does not certify (BR 6.1.5: no Ed25519 under tls_server)."""
    kind = key_type_of(key)
    if kind not in profile.key_types:
        raise Rejected(
            Code.KEY_TYPE_NOT_ALLOWED,
            f"the CSR's {kind} key is not certified by the {profile.name} profile (allowed: "
            f"{', '.join(profile.key_types)}; BR 6.1.5 allows RSA and ECDSA only)",
        )


def check_subject(name: x509.Name, profile: Profile, ca_common_names: Iterable[str]) -> str:
    """Check every DN value, the attributes the profile allows and the CN rules; return the CN."""
    check_attributes_allowed(name, profile)
    for attribute in name:
        label = attribute_name(attribute.oid)
        value = attribute.value
        if not isinstance(value, str) or attribute._type not in _TEXT_TYPES:
            raise Rejected(
                Code.SUBJECT_BAD_CHARACTER,
                f"subject {label} is not a text value (a DirectoryString or IA5String)",
            )
        # isprintable() is False for every Cc, Cf, Zl and Zp character: the slow look is only
        # for a value that has one of those or some other unprintable character.
        if not value.isprintable() and any(
            unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp"} for char in value
        ):
            raise Rejected(
                Code.SUBJECT_BAD_CHARACTER,
                f"subject {label} contains a control character (NUL, TAB, newline or similar)",
            )
        if _FORGED_ATTRIBUTE.search(value):
            raise Rejected(
                Code.SUBJECT_BAD_CHARACTER,
                f"subject {label} contains '/NAME=', which would read as another attribute",
            )
        limit = _MAX_VALUE_LENGTH.get(attribute.oid, _DEFAULT_MAX_VALUE_LENGTH)
        if len(value) > limit:
            raise Rejected(
                Code.SUBJECT_TOO_LONG,
                f"subject {label} has {len(value)} characters; at most {limit} are allowed",
            )
        if not value.strip():
            raise Rejected(Code.SUBJECT_BAD_CHARACTER, f"subject {label} is empty")
        if attribute.oid in _IA5_ATTRIBUTES and not value.isascii():
            raise Rejected(
                Code.SUBJECT_BAD_CHARACTER,
                f"subject {label} is not ASCII, which its IA5String type requires (RFC 5280 A.1)",
            )
    check_country(name)
    common_names = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common_names:
        raise Rejected(Code.SUBJECT_CN_MISSING, "the subject has no commonName (CN)")
    if len(common_names) > 1:
        raise Rejected(Code.SUBJECT_CN_REPEATED, "the subject has more than one commonName (CN)")
    common_name = str(common_names[0].value)
    if _comparable_name(common_name) in {_comparable_name(cn) for cn in ca_common_names}:
        raise Rejected(
            Code.SUBJECT_CN_IS_CA,
            f"subject CN {common_name!r} is the root's or the intermediate's CN",
        )
    if profile.common_name == "fqdn" and not (
        _is_ip_address(common_name) or is_dns_name(common_name, wildcard=profile.wildcards)
    ):
        raise Rejected(
            Code.SUBJECT_CN_NOT_FQDN,
            f"subject CN {common_name!r} is not a fully qualified domain name or IP address",
        )
    if not profile.wildcards and _WILDCARD_LABEL.search(common_name):
        raise Rejected(
            Code.SUBJECT_CN_WILDCARD,
            f"subject CN {common_name!r} is a wildcard, which the {profile.name} profile refuses",
        )
    return common_name


def check_common_name_in_names(
    common_name: str, names: tuple[x509.GeneralName, ...], profile: Profile
) -> None:
    """Refuse a CN that is none of the SAN values, where the profile asks (BR 7.1.2.7.2)."""
    if not profile.common_name_in_san:
        return
    canonical = canonical_common_name(common_name, profile)
    if not any(str(name.value) == canonical for name in names):
        raise Rejected(
            Code.SUBJECT_CN_NOT_IN_SAN,
            f"subject CN {common_name!r} is not one of the subjectAltName values; the "
            f"{profile.name} profile wants it among them (BR 7.1.2.7.2)",
        )


def check_requested_extensions(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    """Refuse requests for CA powers; return the requested SANs (nothing else is ever copied)."""
    try:
        extensions = list(csr.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise Rejected(
            Code.CSR_MALFORMED, f"the CSR's requested extensions do not parse ({exc})"
        ) from None
    names: list[x509.GeneralName] = []
    for extension in extensions:
        value = extension.value
        if isinstance(value, x509.BasicConstraints) and (value.ca or value.path_length is not None):
            raise Rejected(
                Code.CSR_CA_REQUESTED, "the CSR asks for basicConstraints CA:TRUE or a pathlen"
            )
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            raise Rejected(
                Code.CSR_CA_REQUESTED, "the CSR asks for keyCertSign or cRLSign key usage"
            )
        if isinstance(value, x509.SubjectAlternativeName):
            names.extend(value)
        elif extension.critical and extension.oid not in _HANDLED_REQUEST_EXTENSIONS:
            raise Rejected(
                Code.CSR_CRITICAL_EXTENSION,
                f"the CSR requests critical extension {extension.oid.dotted_string}, which is not supported",
            )
    return names


def parse_san_text(text: str) -> x509.GeneralName:
    """`DNS:name`, `IP:address`, `email:address` or `URI:uri` as a GeneralName."""
    kind, colon, value = text.partition(":")
    kind_name = _SAN_PREFIXES.get(kind.strip().upper())
    if not colon or kind_name is None:
        raise Rejected(
            Code.SAN_MALFORMED, f"SAN {text!r} is not DNS:, IP:, email: or URI: followed by a value"
        )
    value = value.strip()
    if kind_name == "IP":
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise Rejected(Code.SAN_MALFORMED, f"SAN {text!r} is not an IP address") from None
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise Rejected(
                Code.SAN_MALFORMED, f"SAN {text!r} has a scope id, which no certificate can hold"
            )
        return x509.IPAddress(address)
    if not value.isascii():
        # cryptography takes A-labels only (RFC 5280 7.2-7.4); U-labels raise ValueError.
        raise Rejected(
            Code.SAN_MALFORMED, f"SAN {text!r} is not ASCII (write a domain name as xn-- A-labels)"
        )
    try:
        if kind_name == "DNS":
            return x509.DNSName(value)
        if kind_name == "email":
            return x509.RFC822Name(value)
        return x509.UniformResourceIdentifier(value)
    except ValueError:  # cryptography's own checks, e.g. an empty or '@'-less e-mail address
        raise Rejected(
            Code.SAN_MALFORMED, f"SAN {text!r} is not a valid {kind_name} name"
        ) from None


def san_text(name: x509.GeneralName) -> str:
    """A checked GeneralName as the text `parse_san_text` reads back (`DNS:www.example.com`)."""
    return f"{_SAN_KINDS[type(name)]}:{name.value}"


def resolve_subject_alternative_names(
    profile: Profile,
    common_name: str,
    from_csr: list[x509.GeneralName],
    from_request: list[str],
) -> tuple[x509.GeneralName, ...]:
    """Merge the CSR's and the request's SANs, check them against the profile, dedupe in order."""
    names = list(from_csr) + [parse_san_text(text) for text in from_request]
    if not names and profile.san_from_common_name:
        names.append(
            x509.IPAddress(ipaddress.ip_address(common_name))
            if _is_ip_address(common_name)
            else x509.DNSName(common_name.lower())
        )
    if not names and profile.san_required:
        raise Rejected(Code.SAN_REQUIRED, f"the {profile.name} profile requires a subjectAltName")
    unique: dict[x509.GeneralName, None] = {}
    for name in names:
        check_general_name(name, profile)
        unique.setdefault(_normalised(name), None)
        if len(unique) > profile.max_san:
            raise Rejected(
                Code.SAN_TOO_MANY,
                f"the request has more than {profile.max_san} subjectAltName values, the "
                f"{profile.name} profile's max_san",
            )
    return tuple(unique)


def _normalised(name: x509.GeneralName) -> x509.GeneralName:
    """A DNS name in lower case (RFC 4343: case carries no meaning); other names as they are."""
    if isinstance(name, x509.DNSName):
        return x509.DNSName(name.value.lower())
    return name


def check_general_name(name: x509.GeneralName, profile: Profile) -> None:
    kind = _SAN_KINDS.get(type(name))
    if kind is None or kind not in profile.san_types:
        raise Rejected(
            Code.SAN_TYPE_NOT_ALLOWED,
            f"SAN {_describe_general_name(name)} is not allowed by the {profile.name} profile "
            f"(allowed: {', '.join(profile.san_types)})",
        )
    if isinstance(name, x509.IPAddress) and not isinstance(
        name.value, ipaddress.IPv4Address | ipaddress.IPv6Address
    ):
        raise Rejected(Code.SAN_MALFORMED, f"SAN IP:{name.value} is a network, not an address")
    value = str(name.value)
    # Every Cc character is unprintable: the look at each character is only for a value with one.
    if not value.isprintable() and any(unicodedata.category(char) == "Cc" for char in value):
        raise Rejected(Code.SAN_MALFORMED, f"SAN {kind} contains a control character")
    if not value.isascii():
        raise Rejected(Code.SAN_MALFORMED, f"SAN {kind}:{value!r} is not ASCII")
    if isinstance(name, x509.DNSName):
        if value.startswith("*.") and not profile.wildcards:
            raise Rejected(
                Code.SAN_WILDCARD,
                f"SAN DNS:{value} is a wildcard, which the {profile.name} profile refuses",
            )
        dns_name, what = value.lower(), f"SAN DNS:{value}"
        check_dns_name(dns_name, what)
        check_wildcard_base(dns_name, what)
        if profile.public_names:
            check_public_dns_name(dns_name, what)
    elif isinstance(name, x509.IPAddress):
        address = name.value
        if profile.public_names and isinstance(address, IPAddress):
            check_public_ip_address(address, f"SAN IP:{address}")
    elif isinstance(name, x509.RFC822Name):
        match = _EMAIL.match(value)
        if not match or not is_dns_name(match.group(1), wildcard=False):
            raise Rejected(Code.SAN_MALFORMED, f"SAN email:{value!r} is not a valid e-mail address")
    elif isinstance(name, x509.UniformResourceIdentifier) and not re.match(
        r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", value
    ):
        raise Rejected(Code.SAN_MALFORMED, f"SAN URI:{value!r} is not an absolute URI")


@lru_cache(maxsize=1024)
def _comparable_name(text: str) -> str:
    """A CN as a reader sees it: NFKC, runs of white space as one space, case folded."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def _is_ip_address(text: str) -> bool:
    return ip_address_or_none(text) is not None


def _describe_general_name(name: x509.GeneralName) -> str:
    return f"{type(name).__name__}:{name.value}"
