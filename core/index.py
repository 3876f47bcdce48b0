"""Entries of the OpenSSL CA database, `index.txt` (six TAB-separated fields a line)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache

from cryptography import x509
from cryptography.x509.oid import NameOID

# OpenSSL's short names (crypto/objects/objects.txt) for the attributes a subject may hold.
_SHORT_NAMES: dict[x509.ObjectIdentifier, str] = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
    NameOID.GIVEN_NAME: "GN",
    NameOID.SURNAME: "SN",
    NameOID.TITLE: "title",
    NameOID.STREET_ADDRESS: "street",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
    NameOID.JURISDICTION_COUNTRY_NAME: "jurisdictionC",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
}

REVOCATION_REASONS = frozenset(
    {
        "unspecified",
        "keyCompromise",
        "CACompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
        "certificateHold",
        "removeFromCRL",
    }
)


class Status(StrEnum):
    VALID = "V"
    REVOKED = "R"
    EXPIRED = "E"


# Printable ASCII other than `/` and the backslash: a value that needs no escaping.
_PLAIN_VALUE = re.compile(r"[\x20-\x2e\x30-\x5b\x5d-\x7e]*")


def _escape_value(value: str) -> str:
    r"""Escape a DN value so it can neither split a field nor fake an attribute.

    Like X509_NAME_oneline, bytes outside printable ASCII become \xHH; on top of it a `/` or
    a backslash is escaped, so `O=a/CN=evil` stays one attribute when the line is read back.
    """
    if _PLAIN_VALUE.fullmatch(value):  # the common case, at the cost of one regex match
        return value
    out: list[str] = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if char in "/\\":
            out.append("\\" + char)
        elif 0x20 <= byte <= 0x7E:
            out.append(char)
        else:
            out.append(f"\\x{byte:02X}")
    return "".join(out)


def openssl_oneline(name: x509.Name) -> str:
    """The subject in OpenSSL's one-line form, `/C=US/O=Alice Ltd/CN=www.example.com`."""
    parts: list[str] = []
    for attribute in name:
        label = _SHORT_NAMES.get(attribute.oid, attribute.oid.dotted_string)
        value = attribute.value if isinstance(attribute.value, str) else attribute.value.hex()
        parts.append(f"/{label}={_escape_value(value)}")
    return "".join(parts)


@lru_cache(maxsize=256)  # a batch's certificates mostly share one notAfter
def format_asn1_time(moment: datetime) -> str:
    """UTCTime `YYMMDDHHMMSSZ` before 2050, GeneralizedTime `YYYYMMDDHHMMSSZ` after (RFC 5280 4.1.2.5)."""
    moment = moment.astimezone(UTC)
    if moment.year < 2050:
        return moment.strftime("%y%m%d%H%M%SZ")
    return moment.strftime("%Y%m%d%H%M%SZ")


def parse_asn1_time(text: str) -> datetime:
    """Read back a time written by `format_asn1_time` (or by OpenSSL): YYMMDDHHMMSSZ or
    YYYYMMDDHHMMSSZ, without strptime (most of the cost of reading 100,000 index lines)."""
    digits = text[:-1]
    if (
        text[-1:] != "Z"
        or len(text) not in (13, 15)
        or not digits.isascii()
        or not digits.isdigit()
    ):
        raise ValueError(f"{text!r} is not an index.txt time (YYMMDDHHMMSSZ)")
    if len(text) == 13:
        year = int(text[:2])
        year += 1900 if year >= 50 else 2000  # RFC 5280 4.1.2.5.1
        rest = text[2:]
    else:
        year, rest = int(text[:4]), text[4:]
    return datetime(
        year,
        int(rest[0:2]),
        int(rest[2:4]),
        int(rest[4:6]),
        int(rest[6:8]),
        int(rest[8:10]),
        tzinfo=UTC,
    )


def format_serial(serial: int) -> str:
    """Upper-case hex with an even number of digits, as OpenSSL writes serials."""
    digits = f"{serial:X}"
    return digits if len(digits) % 2 == 0 else "0" + digits


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One certificate's line in `index.txt`."""

    status: Status
    expires: datetime
    serial: int
    subject: str
    revoked_at: datetime | None = None
    revocation_reason: str | None = None
    filename: str = "unknown"

    @classmethod
    def for_certificate(cls, certificate: x509.Certificate) -> IndexEntry:
        return cls(
            status=Status.VALID,
            expires=certificate.not_valid_after_utc,
            serial=certificate.serial_number,
            subject=openssl_oneline(certificate.subject),
        )

    def to_openssl_line(self, now: datetime | None = None) -> str:
        """The line `openssl ca` writes (no newline); past notAfter a valid entry reads `E`."""
        status = self.status
        if status is Status.VALID and now is not None and now >= self.expires:
            status = Status.EXPIRED
        revocation = ""
        if self.revoked_at is not None:
            revocation = format_asn1_time(self.revoked_at)
            if self.revocation_reason and self.revocation_reason != "unspecified":
                revocation += f",{self.revocation_reason}"
        fields = (
            status.value,
            format_asn1_time(self.expires),
            revocation,
            format_serial(self.serial),
            self.filename,
            self.subject,
        )
        line = "\t".join(fields)
        if "\n" in line or "\r" in line or line.count("\t") != 5:
            raise ValueError(f"index entry for serial {fields[3]} would break the index line")
        return line

    @classmethod
    def from_openssl_line(cls, line: str) -> IndexEntry:
        """Parse one `index.txt` line; raises ValueError naming what is wrong."""
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 6:
            raise ValueError(f"expected 6 TAB-separated fields, found {len(fields)}")
        status_text, expiry, revocation, serial, filename, subject = fields
        revoked_at: datetime | None = None
        reason: str | None = None
        if revocation:
            when, _, reason_text = revocation.partition(",")
            revoked_at = parse_asn1_time(when)
            reason = reason_text or None
        return cls(
            status=Status(status_text),
            expires=parse_asn1_time(expiry),
            serial=int(serial, 16),
            subject=subject,
            revoked_at=revoked_at,
            revocation_reason=reason,
            filename=filename,
        )

    def revoked(self, when: datetime, reason: str | None) -> IndexEntry:
        """This entry marked revoked at `when` for `reason` (an RFC 5280 5.3.1 name)."""
        if reason is not None and reason not in REVOCATION_REASONS:
            raise ValueError(f"unknown revocation reason {reason!r}")
        return replace(self, status=Status.REVOKED, revoked_at=when, revocation_reason=reason)
