"""Reading one field of a CSR's DER by hand, where `cryptography` refuses to parse it.

Newer `cryptography` releases refuse an RSA key whose public exponent is even or below 3 as
they parse it, so the policy cannot tell such a key from a broken encoding. This reads the
exponent straight from the DER (X.690 8.1: tag, length, contents) to name the real reason.
"""

from __future__ import annotations

_SEQUENCE, _INTEGER, _BIT_STRING, _OID = 0x30, 0x02, 0x03, 0x06
# 1.2.840.113549.1.1.1 rsaEncryption (RFC 8017 A.1), DER-encoded contents.
_RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")
# 1.2.840.10045.2.1 id-ecPublicKey (RFC 5480 2.1.1), DER-encoded contents.
_EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")


def der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the element at `offset`."""
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("DER element runs past the end")
    return tag, start, end


def der_children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    elements = []
    while start < end:
        element = der_element(data, start)
        elements.append(element)
        start = element[2]
    return elements


def _key_algorithm(csr_der: bytes) -> tuple[bytes, tuple[int, int, int]] | None:
    """(algorithm OID contents, the key's BIT STRING element) of a CSR's subjectPublicKeyInfo."""
    try:
        _, request_start, request_end = der_element(csr_der, 0)
        info_tag, info_start, info_end = der_children(csr_der, request_start, request_end)[0]
        spki_tag, spki_start, spki_end = der_children(csr_der, info_start, info_end)[2]
        algorithm, key_bits = der_children(csr_der, spki_start, spki_end)[:2]
        oid_tag, oid_start, oid_end = der_children(csr_der, algorithm[1], algorithm[2])[0]
    except (IndexError, ValueError):
        return None
    if (info_tag, spki_tag, oid_tag, key_bits[0]) != (_SEQUENCE, _SEQUENCE, _OID, _BIT_STRING):
        return None
    return csr_der[oid_start:oid_end], key_bits


def is_ec_public_key(csr_der: bytes) -> bool:
    """True when a CSR's subjectPublicKeyInfo names id-ecPublicKey, whatever its point holds."""
    found = _key_algorithm(csr_der)
    return found is not None and found[0] == _EC_PUBLIC_KEY


def rsa_public_exponent(csr_der: bytes) -> int | None:
    """The RSA public exponent in a CSR's subjectPublicKeyInfo; None if it is not RSA or unreadable."""
    found = _key_algorithm(csr_der)
    if found is None or found[0] != _RSA_ENCRYPTION:
        return None
    key_bits = found[1]
    try:
        key = csr_der[key_bits[1] + 1 : key_bits[2]]  # past the unused-bits octet
        _, key_start, key_end = der_element(key, 0)
        exponent = der_children(key, key_start, key_end)[1]
        if exponent[0] != _INTEGER:
            return None
        return int.from_bytes(key[exponent[1] : exponent[2]], "big", signed=True)
    except (IndexError, ValueError):
        return None
