"""describe_certificate / describe_csr checked line by line against the real `openssl -text`."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from casign.inspect import (
    NS_CERT_TYPE_OID,
    NS_COMMENT_OID,
    decode_der_bit_string,
    describe_certificate,
    describe_csr,
    openssl_oneline_name,
    openssl_time,
)

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

NOW = datetime.datetime(2015, 4, 11, 12, 42, 33, tzinfo=datetime.UTC)
NS_SERVER = b"\x03\x02\x06\x40"  # BIT STRING, 6 unused bits, bit 1 (server)
NS_CLIENT_EMAIL = b"\x03\x02\x05\xa0"  # BIT STRING, 5 unused bits, bits 0 and 2


def _name(**parts: str) -> x509.Name:
    oids = {
        "C": NameOID.COUNTRY_NAME,
        "ST": NameOID.STATE_OR_PROVINCE_NAME,
        "L": NameOID.LOCALITY_NAME,
        "O": NameOID.ORGANIZATION_NAME,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
        "CN": NameOID.COMMON_NAME,
    }
    return x509.Name([x509.NameAttribute(oids[key], value) for key, value in parts.items()])


def _ia5(text: str) -> bytes:
    """DER IA5String (tag 22), short or long length form."""
    body = text.encode("ascii")
    length = bytes([len(body)]) if len(body) < 128 else bytes([0x81, len(body)])
    return b"\x16" + length + body


@dataclass(frozen=True)
class Authority:
    """A CA certificate and its key."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey


def _ca_extensions(
    key: rsa.RSAPrivateKey, path_length: int | None, parent: Authority | None
) -> list[tuple[x509.ExtensionType, bool]]:
    signer_public = parent.key.public_key() if parent else key.public_key()
    return [
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_public), False),
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
    ]


def _issue(
    subject: x509.Name,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    issuer: Authority | None,
    signer: rsa.RSAPrivateKey,
    serial: int,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=375))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def root() -> Authority:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = _name(
        C="GB",
        ST="England",
        O="Alice Ltd",
        OU="Alice Ltd Certificate Authority",
        CN="Alice Ltd Root CA",
    )
    cert = _issue(
        subject,
        key.public_key(),
        None,
        key,
        x509.random_serial_number(),
        _ca_extensions(key, None, None),
    )
    return Authority(cert, key)


@pytest.fixture(scope="module")
def intermediate(root: Authority) -> Authority:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = _name(
        C="GB",
        ST="England",
        O="Alice Ltd",
        OU="Alice Ltd Certificate Authority",
        CN="Alice Ltd Intermediate CA",
    )
    cert = _issue(subject, key.public_key(), root, root.key, 0x1000, _ca_extensions(key, 0, root))
    return Authority(cert, key)


def _leaf_extensions(
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, issuer: Authority, *, server: bool
) -> list[tuple[x509.ExtensionType, bool]]:
    """The guide's server_cert or usr_cert section, plus a SAN."""
    issuer_key = issuer.cert.public_key()
    assert isinstance(issuer_key, rsa.RSAPublicKey)
    key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key).key_identifier
    aki = x509.AuthorityKeyIdentifier(
        key_identifier=key_id,
        authority_cert_issuer=[x509.DirectoryName(issuer.cert.issuer)],
        authority_cert_serial_number=issuer.cert.serial_number,
    )
    kind = "Server" if server else "Client"
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=not server,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    eku = (
        [ExtendedKeyUsageOID.SERVER_AUTH]
        if server
        else [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION]
    )
    san: list[x509.GeneralName] = (
        [
            x509.DNSName("www.example.com"),
            x509.IPAddress(ipaddress.ip_address("192.0.2.10")),
            x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
        ]
        if server
        else [x509.RFC822Name("alice@example.com"), x509.UniformResourceIdentifier("urn:alice")]
    )
    return [
        (x509.BasicConstraints(ca=False, path_length=None), False),
        (
            x509.UnrecognizedExtension(NS_CERT_TYPE_OID, NS_SERVER if server else NS_CLIENT_EMAIL),
            False,
        ),
        (
            x509.UnrecognizedExtension(
                NS_COMMENT_OID, _ia5(f"OpenSSL Generated {kind} Certificate")
            ),
            False,
        ),
        (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
        (aki, False),
        (usage, True),
        (x509.ExtendedKeyUsage(eku), False),
        (x509.SubjectAlternativeName(san), False),
    ]


def _openssl_text(kind: str, pem: bytes) -> str:
    result = subprocess.run(
        ["openssl", kind, "-noout", "-text", "-nameopt", "compat"],
        input=pem,
        capture_output=True,
        check=True,
    )
    return result.stdout.decode()


def _lines(text: str) -> list[str]:
    """Non-blank lines with runs of whitespace folded, for layout-insensitive comparison."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def _extension_block(lines: list[str]) -> list[str]:
    start = lines.index("X509v3 extensions:")
    end = lines.index("Signature Algorithm: sha256WithRSAEncryption", start)
    return lines[start:end]


def _assert_matches_openssl(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """Every line OpenSSL prints appears in ours, in the same order; ours adds only the decimal."""
    theirs = _lines(_openssl_text("x509", cert.public_bytes(serialization.Encoding.PEM)))
    ours = _lines(describe_certificate(cert))
    missing = [line for line in _extension_block(theirs) if line not in ours]
    assert missing == [], f"lines openssl prints that we do not: {missing}"
    assert _extension_block(ours) == _extension_block(theirs)
    assert [line for line in ours if not line.startswith("decimal:")] == theirs
    return theirs, ours


@needs_openssl
def test_server_cert_matches_openssl(intermediate: Authority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = _name(
        C="US",
        ST="California",
        L="Mountain View",
        O="Alice Ltd",
        OU="Alice Ltd Web Services",
        CN="www.example.com",
    )
    serial = x509.random_serial_number()
    cert = _issue(
        subject,
        key.public_key(),
        intermediate,
        intermediate.key,
        serial,
        _leaf_extensions(key.public_key(), intermediate, server=True),
    )

    theirs, ours = _assert_matches_openssl(cert)

    block = _extension_block(ours)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(intermediate.key.public_key())
    key_id = ":".join(f"{byte:02X}" for byte in aki.key_identifier or b"")
    for expected in [
        "X509v3 Basic Constraints:",
        "CA:FALSE",
        "Netscape Cert Type:",
        "SSL Server",
        "Netscape Comment:",
        "OpenSSL Generated Server Certificate",
        "X509v3 Subject Key Identifier:",
        "X509v3 Authority Key Identifier:",
        f"keyid:{key_id}",
        "DirName:/C=GB/ST=England/O=Alice Ltd/OU=Alice Ltd Certificate Authority"
        "/CN=Alice Ltd Root CA",
        "serial:10:00",
        "X509v3 Key Usage: critical",
        "Digital Signature, Key Encipherment",
        "X509v3 Extended Key Usage:",
        "TLS Web Server Authentication",
        "X509v3 Subject Alternative Name:",
        "DNS:www.example.com, IP Address:192.0.2.10, IP Address:2001:DB8:0:0:0:0:0:1",
    ]:
        assert expected in block
        assert expected in theirs
    assert (
        "Issuer: C=GB, ST=England, O=Alice Ltd, OU=Alice Ltd Certificate Authority, "
        "CN=Alice Ltd Intermediate CA"
    ) in ours
    assert (
        "Subject: C=US, ST=California, L=Mountain View, O=Alice Ltd, "
        "OU=Alice Ltd Web Services, CN=www.example.com"
    ) in ours
    assert "Not Before: Apr 11 12:42:33 2015 GMT" in ours
    assert "Not After : Apr 20 12:42:33 2016 GMT" in ours
    assert "Public Key Algorithm: rsaEncryption" in ours
    assert "Public-Key: (2048 bit)" in ours
    assert "Exponent: 65537 (0x10001)" in ours
    assert f"decimal: {serial}" in ours


@needs_openssl
def test_usr_cert_with_ec_key_matches_openssl(intermediate: Authority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(C="GB", O="Alice Ltd", CN="alice@example.com")
    cert = _issue(
        subject,
        key.public_key(),
        intermediate,
        intermediate.key,
        0x1001,
        _leaf_extensions(key.public_key(), intermediate, server=False),
    )

    theirs, ours = _assert_matches_openssl(cert)

    for expected in [
        "Serial Number: 4097 (0x1001)",
        "Public Key Algorithm: id-ecPublicKey",
        "Public-Key: (256 bit)",
        "ASN1 OID: prime256v1",
        "NIST CURVE: P-256",
        "Netscape Cert Type:",
        "SSL Client, S/MIME",
        "OpenSSL Generated Client Certificate",
        "X509v3 Key Usage: critical",
        "Digital Signature, Non Repudiation, Key Encipherment",
        "TLS Web Client Authentication, E-mail Protection",
        "email:alice@example.com, URI:urn:alice",
    ]:
        assert expected in ours
        assert expected in theirs


@needs_openssl
def test_root_and_intermediate_match_openssl(root: Authority, intermediate: Authority) -> None:
    _, root_lines = _assert_matches_openssl(root.cert)
    _, intermediate_lines = _assert_matches_openssl(intermediate.cert)

    assert "CA:TRUE" in root_lines
    assert "CA:TRUE, pathlen:0" in intermediate_lines
    assert "Digital Signature, Certificate Sign, CRL Sign" in intermediate_lines
    # keyid alone is printed bare, without the `keyid:` label
    aki_value = root_lines[root_lines.index("X509v3 Authority Key Identifier:") + 1]
    assert not aki_value.startswith("keyid:")


@needs_openssl
def test_csr_matches_openssl() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(C="US", O="Alice Ltd", CN="www.example.com"))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("www.example.com")]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM)

    theirs = _lines(_openssl_text("req", pem))
    ours = _lines(describe_csr(csr))

    assert ours == theirs
    for expected in [
        "Subject: C=US, O=Alice Ltd, CN=www.example.com",
        "NIST CURVE: P-384",
        "Requested Extensions:",
        "X509v3 Subject Alternative Name:",
        "DNS:www.example.com",
        "X509v3 Basic Constraints: critical",
        "CA:FALSE",
        "Signature Algorithm: ecdsa-with-SHA384",
    ]:
        assert expected in ours


def test_ns_cert_type_bits_are_read_from_der() -> None:
    assert decode_der_bit_string(NS_SERVER) == {1}
    assert decode_der_bit_string(NS_CLIENT_EMAIL) == {0, 2}
    assert decode_der_bit_string(b"\x03\x01\x00") == set()
    assert decode_der_bit_string(b"\x03\x02\x06") is None  # length says 2, one byte present
    assert decode_der_bit_string(b"\x04\x02\x06\x40") is None  # OCTET STRING, not BIT STRING
    assert decode_der_bit_string(b"\x03\x02\x08\x40") is None  # more than 7 unused bits


def test_value_with_newline_cannot_forge_a_line(intermediate: Authority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    forged = "hello\n            X509v3 Basic Constraints: critical\n                CA:TRUE"
    cert = _issue(
        _name(CN="x.example.com"),
        key.public_key(),
        intermediate,
        intermediate.key,
        7,
        [(x509.UnrecognizedExtension(NS_COMMENT_OID, _ia5(forged)), False)],
    )

    text = describe_certificate(cert)

    assert not any(line.strip() == "CA:TRUE" for line in text.splitlines())
    assert "hello\\x0A" in text


def test_unknown_extension_is_shown_as_oid_and_hex(intermediate: Authority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), b"\x04\x02\xab\xcd")
    cert = _issue(
        _name(CN="x.example.com"),
        key.public_key(),
        intermediate,
        intermediate.key,
        8,
        [(unknown, True)],
    )

    lines = _lines(describe_certificate(cert))

    position = lines.index("1.2.3.4.5: critical")
    assert lines[position + 1] == "04:02:ab:cd"


def test_names_and_times_use_openssl_forms() -> None:
    name = _name(C="GB", ST="England", O="A/B+C", CN="Zürich")
    assert openssl_oneline_name(name) == r"/C=GB/ST=England/O=A\/B\+C/CN=Z\xC3\xBCrich"
    assert openssl_time(datetime.datetime(2016, 4, 2, 1, 2, 3, tzinfo=datetime.UTC)) == (
        "Apr  2 01:02:03 2016 GMT"
    )
