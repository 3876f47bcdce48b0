"""Describe certificates and CSRs the way `openssl x509|req -noout -text` (OpenSSL 3.0) does."""

from __future__ import annotations

import datetime
import functools
import ipaddress
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.name import _ASN1Type

from core.auth import ca_identity
from core.layout import folder_names, intermediate_cert_path
from core.oids import NS_CERT_TYPE_OID, NS_COMMENT_OID
from core.queue import QueueNames

CHALLENGE_PASSWORD_OID = x509.ObjectIdentifier("1.2.840.113549.1.9.7")
EXTENSION_REQUEST_OID = x509.ObjectIdentifier("1.2.840.113549.1.9.14")

# OpenSSL's long names (crypto/objects/objects.txt) for the OIDs this module prints.
OPENSSL_LONG_NAMES: dict[str, str] = {
    "2.5.29.14": "X509v3 Subject Key Identifier",
    "2.5.29.15": "X509v3 Key Usage",
    "2.5.29.16": "X509v3 Private Key Usage Period",
    "2.5.29.17": "X509v3 Subject Alternative Name",
    "2.5.29.18": "X509v3 Issuer Alternative Name",
    "2.5.29.19": "X509v3 Basic Constraints",
    "2.5.29.30": "X509v3 Name Constraints",
    "2.5.29.31": "X509v3 CRL Distribution Points",
    "2.5.29.32": "X509v3 Certificate Policies",
    "2.5.29.32.0": "X509v3 Any Policy",
    "2.5.29.33": "X509v3 Policy Mappings",
    "2.5.29.35": "X509v3 Authority Key Identifier",
    "2.5.29.36": "X509v3 Policy Constraints",
    "2.5.29.37": "X509v3 Extended Key Usage",
    "2.5.29.46": "X509v3 Freshest CRL",
    "2.5.29.54": "X509v3 Inhibit Any Policy",
    "1.3.6.1.5.5.7.1.1": "Authority Information Access",
    "1.3.6.1.5.5.7.1.11": "Subject Information Access",
    "1.3.6.1.5.5.7.1.24": "TLS Feature",
    "1.3.6.1.5.5.7.48.1.5": "OCSP No Check",
    "1.3.6.1.4.1.11129.2.4.2": "CT Precertificate SCTs",
    "1.3.6.1.4.1.11129.2.4.3": "CT Precertificate Poison",
    "1.3.6.1.4.1.11129.2.4.5": "CT Certificate SCTs",
    "2.16.840.1.113730.1.1": "Netscape Cert Type",
    "2.16.840.1.113730.1.13": "Netscape Comment",
    # extended key usages (RFC 5280 section 4.2.1.12)
    "1.3.6.1.5.5.7.3.1": "TLS Web Server Authentication",
    "1.3.6.1.5.5.7.3.2": "TLS Web Client Authentication",
    "1.3.6.1.5.5.7.3.3": "Code Signing",
    "1.3.6.1.5.5.7.3.4": "E-mail Protection",
    "1.3.6.1.5.5.7.3.8": "Time Stamping",
    "1.3.6.1.5.5.7.3.9": "OCSP Signing",
    "2.5.29.37.0": "Any Extended Key Usage",
    # access methods (RFC 5280 sections 4.2.2.1-2)
    "1.3.6.1.5.5.7.48.1": "OCSP",
    "1.3.6.1.5.5.7.48.2": "CA Issuers",
    "1.3.6.1.5.5.7.48.3": "Time Stamping",
    "1.3.6.1.5.5.7.48.5": "CA Repository",
    # algorithms
    "1.2.840.113549.1.1.1": "rsaEncryption",
    "1.2.840.113549.1.1.4": "md5WithRSAEncryption",
    "1.2.840.113549.1.1.5": "sha1WithRSAEncryption",
    "1.2.840.113549.1.1.10": "rsassaPss",
    "1.2.840.113549.1.1.11": "sha256WithRSAEncryption",
    "1.2.840.113549.1.1.12": "sha384WithRSAEncryption",
    "1.2.840.113549.1.1.13": "sha512WithRSAEncryption",
    "1.2.840.113549.1.1.14": "sha224WithRSAEncryption",
    "1.2.840.10040.4.1": "dsaEncryption",
    "1.2.840.10045.2.1": "id-ecPublicKey",
    "1.2.840.113549.1.9.2": "unstructuredName",
    "1.2.840.113549.1.9.7": "challengePassword",
    "1.2.840.10045.4.1": "ecdsa-with-SHA1",
    "1.2.840.10045.4.3.1": "ecdsa-with-SHA224",
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
    "1.2.840.10045.4.3.4": "ecdsa-with-SHA512",
    "1.3.101.110": "X25519",
    "1.3.101.111": "X448",
    "1.3.101.112": "ED25519",
    "1.3.101.113": "ED448",
}

# OpenSSL's short names for attribute types, as X509_NAME_oneline prints them.
OPENSSL_SHORT_NAMES: dict[str, str] = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.13": "description",
    "2.5.4.15": "businessCategory",
    "2.5.4.17": "postalCode",
    "2.5.4.41": "name",
    "2.5.4.42": "GN",
    "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier",
    "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym",
    "2.5.4.97": "organizationIdentifier",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
    "1.3.6.1.4.1.311.60.2.1.1": "jurisdictionL",
    "1.3.6.1.4.1.311.60.2.1.2": "jurisdictionST",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionC",
}

# nsCertType bit names, bit 0 first, as Netscape's certificate extension spec numbers them.
NS_CERT_TYPE_BITS = (
    "SSL Client",
    "SSL Server",
    "S/MIME",
    "Object Signing",
    "Unused",
    "SSL CA",
    "S/MIME CA",
    "Object Signing CA",
)
NIST_CURVE_NAMES = {
    "secp224r1": "P-224",
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}
OTHER_NAME_LABELS = {
    "1.3.6.1.4.1.311.20.2.3": "UPN",
    "1.3.6.1.5.5.7.8.9": "SmtpUTF8Mailbox",
    "1.3.6.1.5.5.7.8.5": "XmppAddr",
    "1.3.6.1.5.5.7.8.7": "SRVName",
    "1.3.6.1.5.5.7.8.8": "NAIRealm",
}
# CRL reason bits, RFC 5280 section 4.2.1.13, with OpenSSL's labels.
REASON_FLAG_BITS = {
    x509.ReasonFlags.key_compromise: (1, "Key Compromise"),
    x509.ReasonFlags.ca_compromise: (2, "CA Compromise"),
    x509.ReasonFlags.affiliation_changed: (3, "Affiliation Changed"),
    x509.ReasonFlags.superseded: (4, "Superseded"),
    x509.ReasonFlags.cessation_of_operation: (5, "Cessation Of Operation"),
    x509.ReasonFlags.certificate_hold: (6, "Certificate Hold"),
    x509.ReasonFlags.privilege_withdrawn: (7, "Privilege Withdrawn"),
    x509.ReasonFlags.aa_compromise: (8, "AA Compromise"),
}
OPENSSL_CURVE_NAMES = {"secp256r1": "prime256v1", "secp192r1": "prime192v1"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def describe_certificate(cert: x509.Certificate) -> str:
    """Return the text `openssl x509 -noout -text` prints for `cert` (plus a decimal serial)."""
    lines = ["Certificate:", "    Data:", f"        Version: {_version_text(cert.version)}"]
    lines += _serial_lines(cert.serial_number)
    lines.append(f"        Signature Algorithm: {oid_name(cert.signature_algorithm_oid)}")
    pss_lines = _pss_parameter_lines(cert)
    lines += pss_lines
    lines.append(f"        Issuer: {openssl_compat_name(cert.issuer)}")
    lines += [
        "        Validity",
        f"            Not Before: {openssl_time(cert.not_valid_before_utc)}",
        f"            Not After : {openssl_time(cert.not_valid_after_utc)}",
    ]
    lines.append(f"        Subject: {openssl_compat_name(cert.subject)}")
    lines += _public_key_lines(cert.public_key, 8, cert.public_key_algorithm_oid)
    try:
        if len(cert.extensions) > 0:
            lines.append("        X509v3 extensions:")
            lines += _extension_lines(cert.extensions, indent=12)
    except ValueError as exc:  # cryptography refuses duplicate or malformed extensions
        lines.append(f"        X509v3 extensions: cannot be parsed ({_visible(str(exc))})")
    lines += _signature_lines(cert.signature_algorithm_oid, cert.signature, pss_lines)
    return "\n".join(lines) + "\n"


def describe_csr(csr: x509.CertificateSigningRequest) -> str:
    """Return the text `openssl req -noout -text` prints for `csr` (challengePassword redacted)."""
    lines = [
        "Certificate Request:",
        "    Data:",
        "        Version: 1 (0x0)",
        f"        Subject: {openssl_compat_name(csr.subject)}",
    ]
    lines += _public_key_lines(csr.public_key, 8)
    lines.append("        Attributes:")
    attributes = list(csr.attributes)
    if not attributes:
        lines.append("            (none)")
    for attribute in attributes:
        if attribute.oid != EXTENSION_REQUEST_OID:
            lines.append(f"            {_csr_attribute_text(attribute)}")
    lines.append("            Requested Extensions:")
    try:
        lines += _extension_lines(csr.extensions, indent=16)
    except ValueError as exc:  # cryptography refuses duplicate or malformed extensions
        lines.append(f"                cannot be parsed ({_visible(str(exc))})")
    lines += _signature_lines(csr.signature_algorithm_oid, csr.signature, _pss_parameter_lines(csr))
    return "\n".join(lines) + "\n"


def describe_ca_folder(folder: Path, names: QueueNames) -> str:
    """A CA folder's intermediate, its identity and the queue and key prefix its signer uses."""
    intermediate = x509.load_pem_x509_certificate(intermediate_cert_path(folder).read_bytes())
    recorded = folder_names(folder)
    lines = [
        f"CA folder: {folder.absolute()}",
        f"Intermediate: {intermediate.subject.rfc4514_string()}",
        f"CA identity: {ca_identity(intermediate)}",
    ]
    for label, used, kept, variable in (
        ("Queue", names.queue, recorded.queue, "CASIGN_QUEUE"),
        ("Key prefix", names.store_prefix, recorded.store_prefix, "CASIGN_STORE_PREFIX"),
    ):
        source = "casign.toml" if used == kept else f"{variable}; casign.toml says {kept}"
        lines.append(f"{label}: {used} ({source})")
    return "\n".join(lines)


def describe_file(data: bytes) -> str:
    """The certificates or the CSR in `data`, PEM or DER; ValueError when it holds neither.

    Never quotes `data`: a key file given by mistake must not be printed.
    """
    if b"CERTIFICATE REQUEST-----" in data:
        return describe_csr(x509.load_pem_x509_csr(data))
    if b"-----BEGIN CERTIFICATE-----" in data:
        return "\n".join(
            describe_certificate(cert) for cert in x509.load_pem_x509_certificates(data)
        )
    try:
        return describe_certificate(x509.load_der_x509_certificate(data))
    except ValueError:
        return describe_csr(x509.load_der_x509_csr(data))


def oid_name(oid: x509.ObjectIdentifier) -> str:
    """Return OpenSSL's long name for `oid`, or its dotted form when OpenSSL has none."""
    return OPENSSL_LONG_NAMES.get(oid.dotted_string, oid.dotted_string)


def openssl_time(moment: datetime.datetime) -> str:
    """Format a UTC datetime as OpenSSL's ASN1_TIME_print: `Apr 11 12:42:33 2015 GMT`."""
    utc = moment.astimezone(datetime.UTC)
    return (
        f"{_MONTHS[utc.month - 1]} {utc.day:2d} "
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d} {utc.year} GMT"
    )


def openssl_oneline_name(name: x509.Name) -> str:
    """Return X509_NAME_oneline's form, `/C=GB/ST=England/CN=Alice Ltd Root CA`."""
    return "".join(f"/{_rdn_text(rdn)}" for rdn in name.rdns)


def openssl_compat_name(name: x509.Name) -> str:
    """Return the `-nameopt compat` form the guide shows, `C=US, ST=California, CN=...`."""
    # OpenSSL derives this from the one-line form by turning `/X=` into `, X=`; joining the
    # RDNs directly gives the same text without letting a `/` inside a value split it.
    return ", ".join(_rdn_text(rdn) for rdn in name.rdns)


def _rdn_text(rdn: x509.RelativeDistinguishedName) -> str:
    """A (possibly multi-valued) RDN as `O=x+CN=y`, members in their DER order."""
    return "+".join(_attribute_text(attribute) for attribute in rdn)


def _attribute_text(attribute: x509.NameAttribute[str | bytes]) -> str:
    """Render one `type=value` pair with X509_NAME_oneline's escaping of the raw string bytes."""
    label = OPENSSL_SHORT_NAMES.get(attribute.oid.dotted_string, attribute.oid.dotted_string)
    value = attribute.value
    if isinstance(value, str):
        codec = {_ASN1Type.BMPString: "utf-16-be", _ASN1Type.UniversalString: "utf-32-be"}
        raw = value.encode(codec.get(attribute._type, "utf-8"))
    else:
        raw = value
    escaped = []
    for byte in raw:
        if byte < 0x20 or byte > 0x7E:
            escaped.append(f"\\x{byte:02X}")
        else:
            escaped.append(("\\" if chr(byte) in "/+" else "") + chr(byte))
    return f"{label}={''.join(escaped)}"


def _spaced_name(name: x509.Name) -> str:
    """Return the `-nameopt oneline` form OpenSSL's GENERAL_NAME_print uses, `C = GB, CN = x`."""
    return ", ".join(
        " + ".join(_attribute_text(attribute).replace("=", " = ", 1) for attribute in rdn)
        for rdn in name.rdns
    )


def _visible(text: str) -> str:
    """Escape control characters so a value can never start a line of its own."""
    return "".join(f"\\x{ord(ch):02X}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch for ch in text)


def _colon_hex(data: bytes, upper: bool = True) -> str:
    """Return bytes as colon-separated hex, `AB:2C:48`."""
    return ":".join(f"{byte:02X}" if upper else f"{byte:02x}" for byte in data)


def _hex_block(data: bytes, indent: int, per_line: int) -> list[str]:
    """Wrap lower-case colon hex as OpenSSL dumps moduli (15 a line) and signatures (18)."""
    chunks = [data[i : i + per_line] for i in range(0, len(data), per_line)] or [b""]
    lines = [" " * indent + _colon_hex(chunk, upper=False) + ":" for chunk in chunks]
    lines[-1] = lines[-1].removesuffix(":")
    return lines


def _version_text(version: x509.Version) -> str:
    return f"{version.value + 1} ({version.value:#x})"


def _integer_bytes(value: int) -> bytes:
    """Return the magnitude of `value` big-endian, as an ASN1_INTEGER stores it."""
    magnitude = abs(value)
    return magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "big")


def _serial_lines(serial: int) -> list[str]:
    """Serial as OpenSSL prints it: `4096 (0x1000)` if it fits a C long, else colon hex."""
    if 0 <= serial < 2**63 or -(2**63) <= serial < -1:
        sign = "-" if serial < 0 else ""
        return [f"        Serial Number: {sign}{abs(serial)} ({sign}{abs(serial):#x})"]
    negative = " (Negative)" if serial < 0 else ""
    return [
        "        Serial Number:",
        f"            {negative}{_colon_hex(_integer_bytes(serial), upper=False)}",
        f"            decimal: {serial}",
    ]


def _public_key_lines(
    load_key: Callable[[], object], indent: int, algorithm: x509.ObjectIdentifier | None = None
) -> list[str]:
    """The `Subject Public Key Info:` block for RSA, EC, Ed25519 and Ed448 keys."""
    pad, inner = " " * indent, " " * (indent + 8)
    try:
        key = load_key()
    except (ValueError, TypeError):
        shown = oid_name(algorithm) if algorithm is not None else "unknown"
        return [
            f"{pad}Subject Public Key Info:",
            f"{pad}    Public Key Algorithm: {shown}",
            f"{inner}Unable to load Public Key",
        ]
    return [
        f"{pad}Subject Public Key Info:",
        f"{pad}    Public Key Algorithm: {_key_algorithm_name(key, algorithm)}",
        *[f"{inner}{line}" for line in _public_key_detail(key)],
    ]


def _key_algorithm_name(key: object, algorithm: x509.ObjectIdentifier | None) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "rsaEncryption"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "id-ecPublicKey"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ED25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "ED448"
    return oid_name(algorithm) if algorithm is not None else type(key).__name__


def _public_key_detail(key: object) -> list[str]:
    """Key size and public numbers, unindented, in OpenSSL's layout."""
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        modulus = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8 + 1, "big")
        if modulus[1] < 0x80:
            modulus = modulus[1:]  # OpenSSL keeps a leading 00 only when the top bit is set
        return [
            f"Public-Key: ({key.key_size} bit)",
            "Modulus:",
            *_hex_block(modulus, 4, 15),
            f"Exponent: {numbers.e} ({numbers.e:#x})",
        ]
    if isinstance(key, ec.EllipticCurvePublicKey):
        point = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        curve = key.curve.name
        lines = [
            f"Public-Key: ({key.curve.key_size} bit)",
            "pub:",
            *_hex_block(point, 4, 15),
            f"ASN1 OID: {OPENSSL_CURVE_NAMES.get(curve, curve)}",
        ]
        if curve in NIST_CURVE_NAMES:
            lines.append(f"NIST CURVE: {NIST_CURVE_NAMES[curve]}")
        return lines
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        label = "ED25519" if isinstance(key, ed25519.Ed25519PublicKey) else "ED448"
        return [f"{label} Public-Key:", "pub:", *_hex_block(raw, 4, 15)]
    return ["(this key type is not rendered)"]


def _signature_lines(
    algorithm: x509.ObjectIdentifier, signature: bytes, parameter_lines: list[str]
) -> list[str]:
    return [
        f"    Signature Algorithm: {oid_name(algorithm)}",
        "    Signature Value:",
        *parameter_lines,
        *_hex_block(signature, 8, 18),
    ]


def _pss_parameter_lines(signed: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    """RSASSA-PSS parameters (RFC 4055 section 3.1) as OpenSSL lists them, else nothing."""
    parameters = signed.signature_algorithm_parameters
    digest = signed.signature_hash_algorithm
    if not isinstance(parameters, padding.PSS) or digest is None:
        return []
    # cryptography has no public accessor for the MGF digest and the salt length.
    mgf_digest = getattr(parameters.mgf, "_algorithm", None)
    salt_length = getattr(parameters, "_salt_length", None)
    lines = [f"        Hash Algorithm: {digest.name}"]
    if isinstance(mgf_digest, hashes.HashAlgorithm):
        lines.append(f"        Mask Algorithm: mgf1 with {mgf_digest.name}")
    if isinstance(salt_length, int):
        lines.append(f"         Salt Length: 0x{salt_length:X}")
    return [*lines, "        Trailer Field: 0x01 (default)"]


def _csr_attribute_text(attribute: x509.Attribute) -> str:
    """One CSR attribute as `name<pad to 25>:value`; a challenge password is never shown."""
    label = oid_name(attribute.oid)
    if attribute.oid == CHALLENGE_PASSWORD_OID:
        label, shown = "challengePassword", "<redacted>"
    else:
        shown = _visible(attribute.value.decode("latin-1"))
    return f"{label:<25}:{shown}"


def _extension_lines(
    extensions: Iterable[x509.Extension[x509.ExtensionType]], indent: int
) -> list[str]:
    """Each extension as OpenSSL's name line (`: critical`) and its indented value lines."""
    lines: list[str] = []
    for extension in extensions:
        marker = " critical" if extension.critical else ""
        lines.append(f"{' ' * indent}{oid_name(extension.oid)}:{marker}")
        lines += [f"{' ' * (indent + 4)}{line}" for line in render_extension(extension.value)]
    return lines


@functools.singledispatch
def render_extension(value: x509.ExtensionType) -> list[str]:
    """Return an extension's value lines, unindented; unknown kinds as hex of their DER."""
    return _hex_block(value.public_bytes(), 0, 18)


@render_extension.register
def _basic_constraints(value: x509.BasicConstraints) -> list[str]:
    text = "CA:TRUE" if value.ca else "CA:FALSE"
    return [text if value.path_length is None else f"{text}, pathlen:{value.path_length}"]


@render_extension.register
def _key_usage(value: x509.KeyUsage) -> list[str]:
    agreement = value.key_agreement
    bits = [
        (value.digital_signature, "Digital Signature"),
        (value.content_commitment, "Non Repudiation"),
        (value.key_encipherment, "Key Encipherment"),
        (value.data_encipherment, "Data Encipherment"),
        (agreement, "Key Agreement"),
        (value.key_cert_sign, "Certificate Sign"),
        (value.crl_sign, "CRL Sign"),
        (agreement and value.encipher_only, "Encipher Only"),
        (agreement and value.decipher_only, "Decipher Only"),
    ]
    return [", ".join(label for is_set, label in bits if is_set) or "<EMPTY>"]


@render_extension.register
def _extended_key_usage(value: x509.ExtendedKeyUsage) -> list[str]:
    return [", ".join(oid_name(usage) for usage in value)]


@render_extension.register
def _subject_key_identifier(value: x509.SubjectKeyIdentifier) -> list[str]:
    return [_colon_hex(value.digest)]


@render_extension.register
def _authority_key_identifier(value: x509.AuthorityKeyIdentifier) -> list[str]:
    lines = []
    has_issuer = value.authority_cert_issuer is not None
    has_serial = value.authority_cert_serial_number is not None
    if value.key_identifier is not None:
        prefix = "keyid:" if has_issuer or has_serial else ""
        lines.append(prefix + _colon_hex(value.key_identifier))
    lines += [general_name_text(name) for name in value.authority_cert_issuer or []]
    if value.authority_cert_serial_number is not None:
        lines.append(f"serial:{_colon_hex(_integer_bytes(value.authority_cert_serial_number))}")
    return lines


@render_extension.register
def _subject_alternative_name(value: x509.SubjectAlternativeName) -> list[str]:
    return [", ".join(general_name_text(name) for name in value)]


@render_extension.register
def _issuer_alternative_name(value: x509.IssuerAlternativeName) -> list[str]:
    return [", ".join(general_name_text(name) for name in value)]


@render_extension.register
def _crl_distribution_points(value: x509.CRLDistributionPoints) -> list[str]:
    return _distribution_point_lines(value)


@render_extension.register
def _freshest_crl(value: x509.FreshestCRL) -> list[str]:
    return _distribution_point_lines(value)


def _distribution_point_lines(points: Iterable[x509.DistributionPoint]) -> list[str]:
    lines: list[str] = []
    for point in points:
        if point.full_name is not None:
            lines.append("Full Name:")
            lines += [f"  {general_name_text(name, _spaced_name)}" for name in point.full_name]
        if point.relative_name is not None:
            relative = x509.Name([point.relative_name])
            lines += ["Relative Name:", f"  {_spaced_name(relative)}"]
        if point.reasons is not None:
            reasons = sorted(
                REASON_FLAG_BITS[reason] for reason in point.reasons if reason in REASON_FLAG_BITS
            )
            lines += ["Reasons:", f"  {', '.join(label for _, label in reasons) or '<EMPTY>'}"]
        if point.crl_issuer is not None:
            lines.append("CRL Issuer:")
            lines += [f"  {general_name_text(name, _spaced_name)}" for name in point.crl_issuer]
    return lines


@render_extension.register
def _authority_information_access(value: x509.AuthorityInformationAccess) -> list[str]:
    return [
        f"{oid_name(access.access_method)} - {general_name_text(access.access_location)}"
        for access in value
    ]


@render_extension.register
def _subject_information_access(value: x509.SubjectInformationAccess) -> list[str]:
    return [
        f"{oid_name(access.access_method)} - {general_name_text(access.access_location)}"
        for access in value
    ]


@render_extension.register
def _certificate_policies(value: x509.CertificatePolicies) -> list[str]:
    lines = []
    for policy in value:
        lines.append(f"Policy: {oid_name(policy.policy_identifier)}")
        for qualifier in policy.policy_qualifiers or []:
            if isinstance(qualifier, str):
                lines.append(f"  CPS: {_visible(qualifier)}")
                continue
            lines.append("  User Notice:")
            reference = qualifier.notice_reference
            if reference is not None:
                numbers = ", ".join(str(number) for number in reference.notice_numbers)
                plural = "s" if len(reference.notice_numbers) > 1 else ""
                lines += [
                    f"    Organization: {_visible(reference.organization or '')}",
                    f"    Number{plural}: {numbers}",
                ]
            if qualifier.explicit_text is not None:
                lines.append(f"    Explicit Text: {_visible(qualifier.explicit_text)}")
    return lines


@render_extension.register
def _name_constraints(value: x509.NameConstraints) -> list[str]:
    lines = []
    for label, subtrees in (
        ("Permitted", value.permitted_subtrees),
        ("Excluded", value.excluded_subtrees),
    ):
        if subtrees:
            lines.append(f"{label}:")
            lines += [f"  {_name_constraint_text(name)}" for name in subtrees]
    return lines


def _name_constraint_text(name: x509.GeneralName) -> str:
    """A name-constraint subtree; IP ranges print as OpenSSL's `IP:address/mask`."""
    if isinstance(name, x509.IPAddress) and isinstance(
        name.value, ipaddress.IPv4Network | ipaddress.IPv6Network
    ):
        network = name.value
        return f"IP:{_ip_text(network.network_address)}/{_ip_text(network.netmask)}"
    return general_name_text(name, _spaced_name)


@render_extension.register
def _policy_constraints(value: x509.PolicyConstraints) -> list[str]:
    parts = []
    if value.require_explicit_policy is not None:
        parts.append(f"Require Explicit Policy:{value.require_explicit_policy}")
    if value.inhibit_policy_mapping is not None:
        parts.append(f"Inhibit Policy Mapping:{value.inhibit_policy_mapping}")
    return [", ".join(parts)]


@render_extension.register
def _inhibit_any_policy(value: x509.InhibitAnyPolicy) -> list[str]:
    return [str(value.skip_certs)]


@render_extension.register
def _tls_feature(value: x509.TLSFeature) -> list[str]:
    return [", ".join(feature.name for feature in value)]


@render_extension.register
def _ocsp_no_check(_value: x509.OCSPNoCheck) -> list[str]:
    return []


@render_extension.register
def _unrecognized(value: x509.UnrecognizedExtension) -> list[str]:
    """Netscape extensions cryptography leaves as raw DER; anything else as hex."""
    if value.oid == NS_CERT_TYPE_OID:
        bits = decode_der_bit_string(value.value)
        if bits is not None:
            names = [label for index, label in enumerate(NS_CERT_TYPE_BITS) if index in bits]
            return [", ".join(names) or "<EMPTY>"]
    if value.oid == NS_COMMENT_OID:
        comment = _der_primitive(value.value, tag=0x16)  # IA5String
        if comment is not None:
            return [_visible(comment.decode("latin-1"))]
    return _hex_block(value.value, 0, 18)


def decode_der_bit_string(der: bytes) -> set[int] | None:
    """Return the numbers of the bits set in a DER BIT STRING (bit 0 = first), None if malformed."""
    content = _der_primitive(der, tag=0x03)
    if not content or content[0] > 7 or (len(content) == 1 and content[0] != 0):
        return None
    unused, data = content[0], content[1:]
    total_bits = len(data) * 8 - unused
    return {index for index in range(total_bits) if data[index // 8] & (0x80 >> (index % 8))}


def _der_primitive(der: bytes, tag: int) -> bytes | None:
    """Return the content of a single DER TLV with `tag` filling all of `der`, else None."""
    if len(der) < 2 or der[0] != tag:
        return None
    length, offset = der[1], 2
    if length & 0x80:  # long form, X.690 section 8.1.3.5
        count = length & 0x7F
        if count == 0 or count > 4 or len(der) < 2 + count:
            return None
        length, offset = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    if offset + length != len(der):
        return None
    return der[offset:]


def general_name_text(
    name: x509.GeneralName, directory_form: Callable[[x509.Name], str] = openssl_oneline_name
) -> str:
    """One GeneralName as OpenSSL's i2v_GENERAL_NAME prints it: `DNS:x`, `IP Address:y`, ..."""
    if isinstance(name, x509.DNSName):
        return f"DNS:{_visible(name.value)}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{_visible(name.value)}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{_visible(name.value)}"
    if isinstance(name, x509.IPAddress):
        address = name.value
        if isinstance(address, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return f"IP Address:{_ip_text(address.network_address)}/{_ip_text(address.netmask)}"
        return f"IP Address:{_ip_text(address)}"
    if isinstance(name, x509.DirectoryName):
        return f"DirName:{directory_form(name.value)}"
    if isinstance(name, x509.RegisteredID):
        return f"Registered ID:{oid_name(name.value)}"
    if isinstance(name, x509.OtherName):
        return f"othername: {_other_name_text(name)}"
    return "othername:<unsupported>"


def _other_name_text(name: x509.OtherName) -> str:
    """`UPN::value` as OpenSSL 3.0 prints an otherName whose value is a UTF8 or IA5 string."""
    label = OTHER_NAME_LABELS.get(name.type_id.dotted_string, oid_name(name.type_id))
    for tag in (0x0C, 0x16):  # UTF8String, IA5String
        content = _der_primitive(name.value, tag)
        if content is not None:
            return f"{label}::{_visible(content.decode('utf-8', errors='replace'))}"
    return f"{label}::<unsupported>"


def _ip_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """IPv4 dotted; IPv6 as eight upper-case groups without `::`, as OpenSSL 3.0 prints it."""
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    packed = address.packed
    return ":".join(f"{int.from_bytes(packed[i : i + 2], 'big'):X}" for i in range(0, 16, 2))


__all__ = [
    "NS_CERT_TYPE_OID",
    "NS_COMMENT_OID",
    "decode_der_bit_string",
    "describe_certificate",
    "describe_csr",
    "general_name_text",
    "oid_name",
    "openssl_compat_name",
    "openssl_oneline_name",
    "openssl_time",
    "render_extension",
]
