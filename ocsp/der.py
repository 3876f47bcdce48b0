"""The few DER encodings an OCSP response needs (X.690 8 and 10), written out by hand.

asn1crypto builds the same bytes but takes about 0.7 ms per ResponseData; these take a few
microseconds, and the tests check them byte for byte against asn1crypto's.
"""

from __future__ import annotations

from datetime import UTC, datetime

INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
ENUMERATED = 0x0A
SEQUENCE = 0x30
GENERALIZED_TIME = 0x18


def tlv(tag: int, content: bytes) -> bytes:
    """One element: the tag, the definite length in its shortest form (X.690 10.1), the content."""
    length = len(content)
    if length < 0x80:
        return bytes((tag, length)) + content
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + content


def sequence(*elements: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(elements))


def explicit(number: int, element: bytes) -> bytes:
    """A context-specific constructed tag [number] EXPLICIT around `element` (numbers below 31)."""
    return tlv(0xA0 | number, element)


def integer(value: int) -> bytes:
    """Two's complement in the fewest octets (X.690 8.3.2)."""
    magnitude = value if value >= 0 else ~value
    return tlv(INTEGER, value.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True))


def enumerated(value: int) -> bytes:
    return tlv(ENUMERATED, integer(value)[2:])


def octet_string(value: bytes) -> bytes:
    return tlv(OCTET_STRING, value)


def bit_string(value: bytes) -> bytes:
    """A BIT STRING of whole octets (no unused bits), as signatures are."""
    return tlv(BIT_STRING, b"\x00" + value)


def generalized_time(moment: datetime) -> bytes:
    """YYYYMMDDHHMMSSZ, UTC, no fraction (RFC 5280 4.1.2.5.2, which RFC 6960 follows)."""
    return tlv(GENERALIZED_TIME, moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ").encode())
