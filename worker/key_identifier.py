"""The subject key identifier of RFC 5280 4.2.1.2 method (1), from a subjectPublicKeyInfo's DER.

`x509.SubjectKeyIdentifier.from_public_key` serializes the key again to hash it; the issuance
path holds the DER already (it checks the signed certificate carries exactly that key).
"""

from __future__ import annotations

import hashlib

from cryptography import x509

from worker.csr_der import der_children, der_element

_SEQUENCE, _BIT_STRING = 0x30, 0x03


def subject_key_identifier(spki_der: bytes) -> x509.SubjectKeyIdentifier:
    """SHA-1 of the subjectPublicKey BIT STRING's value (without its unused-bits octet)."""
    tag, start, end = der_element(spki_der, 0)
    parts = der_children(spki_der, start, end)
    if tag != _SEQUENCE or len(parts) != 2 or parts[1][0] != _BIT_STRING:
        raise ValueError("not a subjectPublicKeyInfo")
    _, key_start, key_end = parts[1]
    digest = hashlib.sha1(spki_der[key_start + 1 : key_end], usedforsecurity=False).digest()
    return x509.SubjectKeyIdentifier(digest)
