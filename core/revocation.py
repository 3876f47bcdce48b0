"""Revocation as the index and CRLs spell it: reason names, serials, and the revocation field."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from core.errors import RefusalCode, Rejected
from core.index import (
    REVOCATION_REASONS,
    IndexEntry,
    Status,
    format_asn1_time,
    format_serial,
    parse_asn1_time,
)

# RFC 5280 5.3.1 names, plus what `openssl ca -revoke` writes for -crl_hold (holdInstruction),
# -crl_compromise (keyTime) and -crl_CA_compromise (CAkeyTime); OpenSSL matches them
# case-insensitively.
_REASON_FLAGS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "CACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "removeFromCRL": x509.ReasonFlags.remove_from_crl,
    "holdInstruction": x509.ReasonFlags.certificate_hold,
    "keyTime": x509.ReasonFlags.key_compromise,
    "CAkeyTime": x509.ReasonFlags.ca_compromise,
}
_CANONICAL_REASONS = {name.lower(): name for name in _REASON_FLAGS}
# removeFromCRL only means something in a delta CRL (RFC 5280 5.3.1); casign makes none.
REVOKE_REASONS = tuple(sorted(REVOCATION_REASONS - {"removeFromCRL"}))


@dataclass(frozen=True, slots=True)
class RevocationInfo:
    """An index line's revocation field, read as a CRL entry or an OCSP answer needs it."""

    revoked_at: datetime
    reason: x509.ReasonFlags | None  # None: no reason given (or unspecified, RFC 5280 5.3.1)
    invalidity_date: datetime | None = None


def canonical_reason(name: str) -> str:
    """The RFC 5280 spelling of a reason name given in any case; refuse unknown names."""
    canonical = _CANONICAL_REASONS.get(name.strip().lower())
    if canonical is None or canonical not in REVOKE_REASONS:
        raise Rejected(
            RefusalCode.REVOKE_BAD_REASON,
            f"reason {name!r} is not one of {', '.join(REVOKE_REASONS)}",
        )
    return canonical


def canonical_serial(text: str) -> str:
    """A serial as the index spells it (upper-case hex, even digits); accepts `0x` and colons."""
    digits = text.strip().replace(":", "").removeprefix("0x").removeprefix("0X")
    try:
        value = int(digits, 16)
    except ValueError:
        raise Rejected(
            RefusalCode.REVOKE_UNKNOWN_SERIAL, f"serial {text!r} is not a hexadecimal number"
        ) from None
    if value <= 0:
        raise Rejected(RefusalCode.REVOKE_UNKNOWN_SERIAL, f"serial {text!r} is not positive")
    return format_serial(value)


def parse_revocation_field(field: str) -> RevocationInfo:
    """Field 3 of an index line: `time[,reason[,extra]]` as `openssl ca -revoke` writes it."""
    when, _, rest = field.partition(",")
    name, _, extra = rest.partition(",")
    reason = _REASON_FLAGS.get(_CANONICAL_REASONS.get(name.lower(), name)) if name else None
    if reason is x509.ReasonFlags.unspecified:
        reason = None
    invalidity = None
    if name in ("keyTime", "CAkeyTime") and extra:
        invalidity = parse_asn1_time(extra)
    return RevocationInfo(parse_asn1_time(when), reason, invalidity)


def revocation_info(entry: IndexEntry) -> RevocationInfo | None:
    """The revocation of a parsed index entry, or None when it is not revoked."""
    if entry.status is not Status.REVOKED or entry.revoked_at is None:
        return None
    reason = entry.revocation_reason
    return parse_revocation_field(
        format_asn1_time(entry.revoked_at) + (f",{reason}" if reason else "")
    )
