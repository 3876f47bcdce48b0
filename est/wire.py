"""EST's bodies (RFC 7030 4, as clarified by RFC 8951): base64 DER in, base64 DER out.

Requests carry a base64 PKCS#10 CSR; certificates go back as a base64 certs-only CMS
SignedData (PKCS#7); serverkeygen answers multipart/mixed with the key first: PKCS#8, or the
key sealed to a client's certificate (`est.key_envelope`).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.name import _ASN1Type

from core.errors import RefusalCode as Code
from est.refusals import EstRefusal

PKCS10_TYPE = "application/pkcs10"
CERTS_ONLY_TYPE = "application/pkcs7-mime; smime-type=certs-only"
CSRATTRS_TYPE = "application/csrattrs"
PKCS8_TYPE = "application/pkcs8"
SERVER_GENERATED_KEY_TYPE = "application/pkcs7-mime; smime-type=server-generated-key"
# The policy's own limit on a CSR (64 KiB DER) as base64, with line breaks and some slack.
MAX_CSR_DER_BYTES = 64 * 1024
MAX_BODY_BYTES = 96 * 1024
MIN_KEY_PASSPHRASE = 32  # characters: e.g. `openssl rand -hex 32`, 256 bits
_LINE = 64
_WHITESPACE = b" \t\r\n"


def check_content_type(content_type: str) -> None:
    """RFC 7030 4.2.1: a CSR is sent as `application/pkcs10`; parameters are ignored."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media != PKCS10_TYPE:
        raise EstRefusal(
            Code.EST_CONTENT_TYPE,
            f"the Content-Type is {media or 'missing'!s}; a CSR is sent as {PKCS10_TYPE}",
        )


def decode_base64(body: bytes) -> bytes:
    """The DER under a base64 body; line breaks and spaces are allowed (RFC 8951 3)."""
    compact = body.translate(None, _WHITESPACE)
    if not compact:
        raise EstRefusal(Code.EST_NOT_BASE64, "the request body is empty; send a base64 CSR")
    try:
        der = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise EstRefusal(
            Code.EST_NOT_BASE64, "the request body is not base64 (RFC 7030 4.2.1)"
        ) from None
    if len(der) > MAX_CSR_DER_BYTES:
        raise EstRefusal(
            Code.CSR_TOO_LARGE,
            f"the CSR is {len(der)} bytes; at most {MAX_CSR_DER_BYTES} are accepted",
        )
    return der


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 CSR from DER, or `csr.malformed`; its subject and extensions are read here."""
    try:
        csr = x509.load_der_x509_csr(der)
        _ = (csr.subject, csr.extensions, csr.public_key())
    except Exception:  # ValueError, or an unsupported key or attribute the parser names
        raise EstRefusal(Code.CSR_MALFORMED, "the body's DER is not a PKCS#10 CSR") from None
    return csr


def octet_string_attribute(
    csr: x509.CertificateSigningRequest, oid: x509.ObjectIdentifier, name: str, max_bytes: int
) -> bytes | None:
    """The value of the CSR's attribute `oid`, which must be one OCTET STRING of 1 to
    `max_bytes` bytes (`csr.malformed` naming `name` if not), or None without that attribute."""
    try:
        attribute = csr.attributes.get_attribute_for_oid(oid)
    except x509.AttributeNotFound:
        return None
    except ValueError:  # an attribute with several values, which cryptography does not read
        attribute = None
    if (
        attribute is None
        or attribute._type != _ASN1Type.OctetString.value
        or not 0 < len(attribute.value) <= max_bytes
    ):
        raise EstRefusal(
            Code.CSR_MALFORMED,
            f"the CSR's {name} is not one OCTET STRING of 1 to {max_bytes} bytes",
        )
    return attribute.value


def csr_to_pem(der: bytes) -> str:
    """A CSR's PEM from its DER (RFC 7468 5: base64 in lines of 64 between the labels)."""
    text = base64.b64encode(der).decode("ascii")
    lines = "".join(text[i : i + _LINE] + "\n" for i in range(0, len(text), _LINE))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{lines}-----END CERTIFICATE REQUEST-----\n"


def pem_to_der(pem: str) -> bytes:
    """The DER of a single-certificate PEM (as the signer writes it), without parsing it."""
    lines = pem.strip().splitlines()
    if (
        len(lines) < 3
        or not lines[0].startswith("-----BEGIN ")
        or not lines[-1].startswith("-----END ")
    ):
        raise ValueError("not a PEM block")
    return base64.b64decode("".join(lines[1:-1]), validate=True)


def wrap_base64(der: bytes) -> bytes:
    """Base64 in lines of 64 characters ended by LF (which `base64 -d` reads; CR it refuses)."""
    text = base64.b64encode(der)
    return b"".join(text[i : i + _LINE] + b"\n" for i in range(0, len(text), _LINE))


def certs_only(certificates: Sequence[x509.Certificate]) -> bytes:
    """A base64 certs-only PKCS#7 (RFC 7030 4.1.3, 4.2.3) holding `certificates`."""
    return wrap_base64(pkcs7.serialize_certificates(list(certificates), serialization.Encoding.DER))


def _der_length(size: int) -> bytes:
    """X.690 8.1.3: short form below 128, else the long form."""
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


# RFC 5652 5.1: SignedData version 1, no digest algorithms, id-data content absent, no signers.
_SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")  # 1.2.840.113549.1.7.2
_DATA_CONTENT = bytes.fromhex("300b06092a864886f70d010701")  # SEQUENCE { 1.2.840.113549.1.7.1 }
_VERSION_1, _EMPTY_SET = bytes.fromhex("020101"), bytes.fromhex("3100")


def certs_only_der(certificate_ders: Sequence[bytes]) -> bytes:
    """`certs_only` from certificates already in DER, the same bytes `cryptography` writes,
    without parsing them again (the enrollment path's certificates were checked already)."""
    # [0] IMPLICIT SET OF Certificate, in DER's order of a SET OF (X.690 11.6)
    certificates = _der(0xA0, b"".join(sorted(certificate_ders)))
    signed_data = _der(0x30, _VERSION_1 + _EMPTY_SET + _DATA_CONTENT + certificates + _EMPTY_SET)
    return wrap_base64(_der(0x30, _SIGNED_DATA_OID + _der(0xA0, signed_data)))


def load_certs_only(body: bytes) -> list[x509.Certificate]:
    """The certificates in a base64 certs-only PKCS#7 (what an EST client reads)."""
    try:
        return pkcs7.load_der_pkcs7_certificates(decode_base64(body))
    except EstRefusal as exc:
        raise ValueError(f"the answer is not base64 ({exc.code})") from None


def private_key_pkcs8(key: PrivateKeyTypes, passphrase: bytes | None = None) -> bytes:
    """The key as PKCS#8 DER: unencrypted (RFC 7030 4.4.2: protected by TLS alone), or, given
    a passphrase, an EncryptedPrivateKeyInfo under PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC:
    `cryptography`'s best available PKCS#8 encryption, read by `openssl pkcs8`).

    Its KDF runs few rounds (2048), which is why a passphrase must be long and random
    (`MIN_KEY_PASSPHRASE`), not a password someone chose.
    """
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if passphrase is not None:
        encryption = serialization.BestAvailableEncryption(passphrase)
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, encryption
    )


def serverkeygen_body(
    key_der: bytes, certificate_der: bytes, key_type: str = PKCS8_TYPE
) -> tuple[bytes, str]:
    """(body, Content-Type) of a serverkeygen answer: multipart/mixed, the key part first, of
    `key_type` (PKCS#8, or a sealed key: `SERVER_GENERATED_KEY_TYPE`, RFC 7030 4.4.2)."""
    boundary = f"est-{secrets.token_hex(12)}"
    parts = [
        (key_type, wrap_base64(key_der)),
        (CERTS_ONLY_TYPE, certs_only_der([certificate_der])),
    ]
    # RFC 2046 5.1.1: each delimiter is CRLF "--" boundary, the CRLF belonging to it.
    body = b""
    for content_type, payload in parts:
        body += (
            (
                f"--{boundary}\r\nContent-Type: {content_type}\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n"
            ).encode("ascii")
            + payload.rstrip(b"\n")
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode("ascii")
    return body, f"multipart/mixed; boundary={boundary}"


@dataclass(frozen=True)
class ServerKeygenAnswer:
    """The parts of a serverkeygen answer: the key's DER (PKCS#8, or the sealed key's CMS when
    `sealed`) and the certificates."""

    key_der: bytes
    sealed: bool
    certificates: list[x509.Certificate]


def split_serverkeygen(body: bytes, content_type: str) -> ServerKeygenAnswer:
    """The key and certificates of a serverkeygen answer; ValueError when it is not one."""
    marker = "boundary="
    if marker not in content_type:
        raise ValueError("the serverkeygen answer names no multipart boundary")
    boundary = content_type.split(marker, 1)[1].split(";", 1)[0].strip().strip('"').encode()
    key_der: bytes | None = None
    sealed = False
    certificates: list[x509.Certificate] = []
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, payload = part.partition(b"\r\n\r\n")
        kind = head.lower()
        if PKCS8_TYPE.encode() in kind or b"smime-type=server-generated-key" in kind:
            key_der, sealed = decode_base64(payload), PKCS8_TYPE.encode() not in kind
        elif b"application/pkcs7-mime" in kind:
            certificates = load_certs_only(payload)
    if key_der is None or not certificates:
        raise ValueError("the serverkeygen answer lacks its key or its certificate")
    return ServerKeygenAnswer(key_der, sealed, certificates)
