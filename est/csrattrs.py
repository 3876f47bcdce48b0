"""The `/csrattrs` answer (RFC 7030 4.5.2): what a CSR for a profile should carry, as DER.

    CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID
    AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute }

For a profile: the commonName the policy requires, the key types the signer accepts (RSA,
ECDSA on P-256/P-384/P-521 as an id-ecPublicKey attribute listing the curves, Ed25519) and,
when the profile takes subjectAltNames, an extensionRequest attribute naming subjectAltName.
"""

from __future__ import annotations

from est.labels import LabelProfile

COMMON_NAME = "2.5.4.3"
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
EC_PUBLIC_KEY = "1.2.840.10045.2.1"
ACCEPTED_CURVES = ("1.2.840.10045.3.1.7", "1.3.132.0.34", "1.3.132.0.35")  # P-256, P-384, P-521
ED25519 = "1.3.101.112"
EXTENSION_REQUEST = "1.2.840.113549.1.9.14"  # PKCS#9
SUBJECT_ALT_NAME = "2.5.29.17"

_SEQUENCE, _SET, _OID = 0x30, 0x31, 0x06


def _length(size: int) -> bytes:
    """X.690 8.1.3: short form below 128, else the long form."""
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def encode_oid(dotted: str) -> bytes:
    """X.690 8.19: the first two arcs as 40 * a + b, then each arc in base 128."""
    arcs = [int(arc) for arc in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise ValueError(f"{dotted!r} is not an object identifier")
    body = b""
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body += bytes(reversed(chunk))
    return _tlv(_OID, body)


def _attribute(kind: str, values: list[bytes]) -> bytes:
    """Attribute ::= SEQUENCE { type OID, values SET OF value }, the SET in DER order."""
    return _tlv(_SEQUENCE, encode_oid(kind) + _tlv(_SET, b"".join(sorted(values))))


def csr_attributes(profile: LabelProfile) -> bytes:
    """The DER CsrAttrs for `profile`."""
    items = [
        encode_oid(COMMON_NAME),
        encode_oid(RSA_ENCRYPTION),
        _attribute(EC_PUBLIC_KEY, [encode_oid(curve) for curve in ACCEPTED_CURVES]),
        encode_oid(ED25519),
    ]
    if profile.san_types:
        items.append(_attribute(EXTENSION_REQUEST, [encode_oid(SUBJECT_ALT_NAME)]))
    return _tlv(_SEQUENCE, b"".join(items))
