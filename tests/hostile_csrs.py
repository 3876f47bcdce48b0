"""Hostile CSRs for the policy tests, the corpus and the fuzzers: hand-made DER where
`cryptography` will not build what an attacker can send (X.690 DER, RFC 2986 PKCS#10)."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

# X.690 8.1.2 universal tags used below.
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_UTF8_STRING = 0x0C
TAG_IA5_STRING = 0x16
TAG_SEQUENCE = 0x30
TAG_SET = 0x31
TAG_ATTRIBUTES = 0xA0  # [0] IMPLICIT SET OF Attribute in CertificationRequestInfo (RFC 2986 4.1)

OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
OID_SHA256_WITH_RSA = "1.2.840.113549.1.1.11"
OID_COMMON_NAME = "2.5.4.3"
OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
OID_SUBJECT_ALT_NAME = "2.5.29.17"
# RFC 8017 9.2 note 1: DER of DigestInfo { sha256, NULL } up to the 32-byte digest.
SHA256_DIGEST_INFO_PREFIX = "3031300d060960864801650304020105000420"
OID_GOST_2012_256 = "1.2.643.7.1.1.1.1"  # a key algorithm cryptography does not know


# --- a minimal DER encoder -------------------------------------------------------------------


def der_length(length: int) -> bytes:
    """X.690 8.1.3: short form below 128, long form above."""
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_length(len(content)) + content


def der_integer(value: int) -> bytes:
    """X.690 8.3 for a non-negative value: a leading 0 byte keeps the top bit clear."""
    return tlv(TAG_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def der_oid(dotted: str) -> bytes:
    """X.690 8.19: first two arcs in one subidentifier, base-128 with continuation bits."""
    arcs = [int(part) for part in dotted.split(".")]
    numbers = [arcs[0] * 40 + arcs[1], *arcs[2:]]
    body = bytearray()
    for number in numbers:
        chunk, rest = [number & 0x7F], number >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body.extend(reversed(chunk))
    return tlv(TAG_OID, bytes(body))


def der_sequence(*items: bytes) -> bytes:
    return tlv(TAG_SEQUENCE, b"".join(items))


def der_set(*items: bytes) -> bytes:
    return tlv(TAG_SET, b"".join(sorted(items)))  # X.690 11.6: SET OF sorted


def der_bit_string(data: bytes) -> bytes:
    return tlv(TAG_BIT_STRING, b"\x00" + data)


def der_null() -> bytes:
    return tlv(TAG_NULL, b"")


def der_name(*attributes: tuple[str, bytes]) -> bytes:
    """A Name of one RDN per (oid, encoded value) pair."""
    return der_sequence(*(der_set(der_sequence(der_oid(oid), value)) for oid, value in attributes))


def rsa_public_key_info(modulus: int, exponent: int) -> bytes:
    """SubjectPublicKeyInfo of an RSA key (RFC 8017 A.1.1) with any numbers at all."""
    algorithm = der_sequence(der_oid(OID_RSA_ENCRYPTION), der_null())
    return der_sequence(
        algorithm, der_bit_string(der_sequence(der_integer(modulus), der_integer(exponent)))
    )


def certification_request_info(
    subject: bytes, public_key_info: bytes, attributes: Sequence[bytes] = (), version: int = 0
) -> bytes:
    return der_sequence(
        der_integer(version), subject, public_key_info, tlv(TAG_ATTRIBUTES, b"".join(attributes))
    )


def extension_request(*extensions: bytes) -> bytes:
    """The PKCS#9 extensionRequest attribute (RFC 2985 5.4.2) holding `extensions`."""
    return der_sequence(der_oid(OID_EXTENSION_REQUEST), der_set(der_sequence(*extensions)))


def der_extension(oid: str, value: bytes, critical: bool = False) -> bytes:
    flag = tlv(0x01, b"\xff") if critical else b""
    return der_sequence(der_oid(oid), flag, tlv(0x04, value))


def signed_request(
    info: bytes, signature: bytes, algorithm_oid: str = OID_SHA256_WITH_RSA
) -> bytes:
    """The CertificationRequest DER: info, algorithm, signature (RFC 2986 4.2)."""
    return der_sequence(
        info, der_sequence(der_oid(algorithm_oid), der_null()), der_bit_string(signature)
    )


def sign_info_rsa(info: bytes, key: rsa.RSAPrivateKey) -> bytes:
    return signed_request(info, key.sign(info, padding.PKCS1v15(), hashes.SHA256()))


def to_pem(der: bytes, label: str = "CERTIFICATE REQUEST") -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def pem_to_der(pem: str) -> bytes:
    lines = [line for line in pem.strip().splitlines() if not line.startswith("-----")]
    return base64.b64decode("".join(lines))


# --- a minimal DER reader, enough to take a CSR apart ----------------------------------------


@dataclass(frozen=True)
class Element:
    """One TLV: its tag, and where its header and content sit in the buffer."""

    tag: int
    start: int
    content_start: int
    end: int

    def content(self, data: bytes) -> bytes:
        return data[self.content_start : self.end]

    def whole(self, data: bytes) -> bytes:
        return data[self.start : self.end]


def read_element(data: bytes, offset: int = 0) -> Element:
    tag, first = data[offset], data[offset + 1]
    position = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        length = int.from_bytes(data[position : position + count], "big")
        position += count
    return Element(tag, offset, position, position + length)


def children(data: bytes, parent: Element) -> list[Element]:
    found, offset = [], parent.content_start
    while offset < parent.end:
        element = read_element(data, offset)
        found.append(element)
        offset = element.end
    return found


def split_request(der: bytes) -> tuple[bytes, bytes, bytes]:
    """(CertificationRequestInfo, signatureAlgorithm, signature BIT STRING) of a CSR, as DER."""
    info, algorithm, signature = children(der, read_element(der))
    return info.whole(der), algorithm.whole(der), signature.whole(der)


def resign(info: bytes, algorithm: bytes, key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """A CSR of `info` signed again with `key` (RSA PKCS#1 v1.5 or ECDSA, SHA-256)."""
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(info, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(info, ec.ECDSA(hashes.SHA256()))
    else:
        raise TypeError(f"cannot re-sign with {type(key).__name__}")
    return der_sequence(info, algorithm, der_bit_string(signature))


# --- the hostile requests themselves ---------------------------------------------------------


def with_tampered_signature(pem: str) -> str:
    """The same CSR with the last byte of its signature flipped: proof of possession fails."""
    der = bytearray(pem_to_der(pem))
    der[-1] ^= 0x01
    return to_pem(bytes(der))


def truncated(pem: str, keep: float = 0.5) -> str:
    """The CSR's DER cut short, wrapped in a well-formed PEM armour."""
    der = pem_to_der(pem)
    return to_pem(der[: int(len(der) * keep)])


def with_version(pem: str, version: int, key: CertificateIssuerPrivateKeyTypes) -> str:
    """The CSR with its version INTEGER replaced (RFC 2986 allows only 0), re-signed."""
    der = pem_to_der(pem)
    info_der, algorithm, _ = split_request(der)
    info = read_element(info_der)
    _, *rest = children(info_der, info)
    new_info = der_sequence(der_integer(version), *(part.whole(info_der) for part in rest))
    return to_pem(resign(new_info, algorithm, key))


def rsa_request(
    modulus: int,
    exponent: int,
    common_name: str = "www.example.com",
    key: rsa.RSAPrivateKey | None = None,
) -> str:
    """A CSR for an RSA key with arbitrary numbers; signed with `key` or a dummy signature."""
    subject = der_name((OID_COMMON_NAME, tlv(TAG_UTF8_STRING, common_name.encode())))
    info = certification_request_info(subject, rsa_public_key_info(modulus, exponent))
    if key is not None:
        return to_pem(sign_info_rsa(info, key))
    size = (modulus.bit_length() + 7) // 8
    return to_pem(signed_request(info, (1).to_bytes(size, "big")))


def rsa_request_with_exponent_one(modulus: int, common_name: str = "www.example.com") -> str:
    """A CSR for the key (n, 1) whose signature verifies: with e = 1 the signature is simply
    the PKCS#1 v1.5 encoded digest (RFC 8017 9.2), which anyone can compute."""
    subject = der_name((OID_COMMON_NAME, tlv(TAG_UTF8_STRING, common_name.encode())))
    info = certification_request_info(subject, rsa_public_key_info(modulus, 1))
    digest = hashes.Hash(hashes.SHA256())
    digest.update(info)
    digest_info = bytes.fromhex(SHA256_DIGEST_INFO_PREFIX) + digest.finalize()
    size = (modulus.bit_length() + 7) // 8
    encoded = b"\x00\x01" + b"\xff" * (size - 3 - len(digest_info)) + b"\x00" + digest_info
    return to_pem(signed_request(info, encoded))


def request_with_subject(key: rsa.RSAPrivateKey, attributes: Sequence[tuple[str, bytes]]) -> str:
    """A CSR whose subject holds hand-encoded attribute values (any tag, any bytes)."""
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = certification_request_info(der_name(*attributes), public)
    return to_pem(sign_info_rsa(info, key))


def odd_modulus(bits: int, seed: int = 1) -> int:
    """A deterministic odd number of exactly `bits` bits (not a real RSA modulus)."""
    value = int.from_bytes(hashes_expand(seed, (bits + 7) // 8), "big")
    value >>= (8 - bits % 8) % 8
    return value | (1 << (bits - 1)) | 1


def hashes_expand(seed: int, size: int) -> bytes:
    out, counter = bytearray(), 0
    while len(out) < size:
        digest = hashes.Hash(hashes.SHA256())
        digest.update(f"{seed}:{counter}".encode())
        out.extend(digest.finalize())
        counter += 1
    return bytes(out[:size])


def request_with_raw_san(
    key: rsa.RSAPrivateKey, common_name: str, general_names: Sequence[bytes]
) -> str:
    """A CSR whose requested subjectAltName holds hand-encoded GeneralNames (any bytes)."""
    subject = der_name((OID_COMMON_NAME, tlv(TAG_UTF8_STRING, common_name.encode())))
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    san = der_extension(OID_SUBJECT_ALT_NAME, der_sequence(*general_names))
    info = certification_request_info(subject, public, [extension_request(san)])
    return to_pem(sign_info_rsa(info, key))


def request_with_unknown_key_algorithm(key: rsa.RSAPrivateKey) -> str:
    """A CSR whose SubjectPublicKeyInfo names an algorithm cryptography cannot load."""
    subject = der_name((OID_COMMON_NAME, tlv(TAG_UTF8_STRING, b"www.example.com")))
    spki = der_sequence(
        der_sequence(der_oid(OID_GOST_2012_256)), der_bit_string(b"\x04\x20" + bytes(32))
    )
    info = certification_request_info(subject, spki)
    return to_pem(sign_info_rsa(info, key))


def edwards_request(
    key: ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey, common_name: str = "www.example.com"
) -> str:
    """A CSR signed with an EdDSA key (which takes no separate hash, RFC 8410 6)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, None)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def name_attribute(oid: x509.ObjectIdentifier, value: str) -> x509.NameAttribute:
    """A name attribute without cryptography's length checks (an attacker has none either)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # cryptography's "Attribute's length" note
        return x509.NameAttribute(oid, value, _validate=False)


def common_name(value: str) -> x509.NameAttribute:
    return name_attribute(NameOID.COMMON_NAME, value)
