"""Revocation state in the results store: revoking, the revoked list, CRL numbers and the CRL.

Keys it adds under the store's prefix (see `casign.store` for the rest):
  revoked             hash: serial hex -> index line, the revoked subset of `index`
  revocation:{id}     string: serial a revocation request revoked (a redelivery is answered once)
  crl:number          counter: the last CRL number drawn (INCR)
  crl:latest          hash: number, pem, this_update, next_update of the newest CRL published
A revocation appends a `revoked` line to the store's hash-chained audit log (casign.audit) in
the same script that changes the index line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, StringConstraints

from casign.audit import audit_line
from casign.errors import Retryable, SigningError
from casign.index import (
    REVOCATION_REASONS,
    IndexEntry,
    Status,
    format_asn1_time,
    format_serial,
)
from casign.store import ResultsStore, _translated

REVOKE_TASK = "casign.revoke"
CRL_TASK = "casign.crl"
REQUEST_MEMORY_SECONDS = 24 * 3600
_MAX_CAS_TRIES = 20
_DURATION_UNITS = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
}

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

# Compare-and-set of one index line: the line is rebuilt in Python (casign.index is the one
# place that formats it) and written only if nobody changed it since it was read.
_REVOKE_CAS = """
local prefix, serial, expected, line = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', prefix .. 'index', serial) ~= expected then return 0 end
redis.call('HSET', prefix .. 'index', serial, line)
redis.call('HSET', prefix .. 'revoked', serial, line)
local head = redis.call('GET', prefix .. 'audit:head') or string.rep('0', 40)
head = redis.sha1hex(head .. '\\n' .. ARGV[5])
redis.call('RPUSH', prefix .. 'audit', head .. ' ' .. ARGV[5])
redis.call('SET', prefix .. 'audit:head', head)
if ARGV[6] ~= '' then
  redis.call('SET', prefix .. 'revocation:' .. ARGV[6], serial, 'EX', ARGV[7])
end
return 1
"""

# Publish a CRL unless a newer one is there already (two workers may race on the schedule).
_PUBLISH_CRL = """
local key = ARGV[1]
local current = tonumber(redis.call('HGET', key, 'number') or '-1')
if current >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', key, 'number', ARGV[2], 'pem', ARGV[3], 'this_update', ARGV[4],
           'next_update', ARGV[5])
return 1
"""

# Raise the CRL counter to at least ARGV[2] (adoption of a folder whose crlnumber is ahead).
_RAISE_COUNTER = """
local current = tonumber(redis.call('GET', ARGV[1]) or '0')
if current < tonumber(ARGV[2]) then redis.call('SET', ARGV[1], ARGV[2]) end
return redis.call('GET', ARGV[1])
"""


class RevocationCode(StrEnum):
    """Stable, machine-readable reasons for refusing a revocation; never renumbered or reused."""

    UNKNOWN_SERIAL = "revoke.unknown_serial"
    ALREADY_REVOKED = "revoke.already_revoked"
    BAD_REASON = "revoke.bad_reason"
    MALFORMED = "revoke.malformed"


class RevocationRefused(SigningError):
    """The revocation is refused; asking again unchanged gives the same answer."""

    def __init__(self, code: RevocationCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


Text128 = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class RevokeRequest(_Message):
    """One `casign.revoke` task: which serial, why, who asks and where to answer."""

    schema_version: Literal[1] = 1
    request_id: Annotated[
        str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@+-]+$")
    ]
    serial: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "unspecified"
    requester: Text128 | None = None
    reply_to: Text128 | None = None
    producer: Annotated[str, StringConstraints(max_length=64)] | None = None
    signature: Annotated[str, StringConstraints(max_length=128)] | None = None  # casign.auth

    def signed_content(self) -> list[object]:
        """What the producer's HMAC covers (with its name and reply_to, as for a batch)."""
        return [self.model_dump(exclude={"producer", "signature"})]


class RevocationResult(_Message):
    """What became of a revocation request, pushed to the requester's reply list."""

    schema_version: Literal[1] = 1
    request_id: str
    status: Literal["revoked", "refused", "failed"]
    serial: str | None = None
    revoked_at: str | None = None  # index.txt time, YYMMDDHHMMSSZ
    reason: str | None = None
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "revoked"


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
        raise RevocationRefused(
            RevocationCode.BAD_REASON,
            f"reason {name!r} is not one of {', '.join(REVOKE_REASONS)}",
        )
    return canonical


def canonical_serial(text: str) -> str:
    """A serial as the index spells it (upper-case hex, even digits); accepts `0x` and colons."""
    digits = text.strip().replace(":", "").removeprefix("0x").removeprefix("0X")
    try:
        value = int(digits, 16)
    except ValueError:
        raise RevocationRefused(
            RevocationCode.UNKNOWN_SERIAL, f"serial {text!r} is not a hexadecimal number"
        ) from None
    if value <= 0:
        raise RevocationRefused(RevocationCode.UNKNOWN_SERIAL, f"serial {text!r} is not positive")
    return format_serial(value)


def parse_index_time(text: str) -> datetime:
    """`casign.index.parse_asn1_time` without strptime, which is most of the cost of reading 100,000 lines."""
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


def parse_revocation_field(field: str) -> RevocationInfo:
    """Field 3 of an index line: `time[,reason[,extra]]` as `openssl ca -revoke` writes it."""
    when, _, rest = field.partition(",")
    name, _, extra = rest.partition(",")
    reason = _REASON_FLAGS.get(_CANONICAL_REASONS.get(name.lower(), name)) if name else None
    if reason is x509.ReasonFlags.unspecified:
        reason = None
    invalidity = None
    if name in ("keyTime", "CAkeyTime") and extra:
        invalidity = parse_index_time(extra)
    return RevocationInfo(parse_index_time(when), reason, invalidity)


def revocation_info(entry: IndexEntry) -> RevocationInfo | None:
    """The revocation of a parsed index entry, or None when it is not revoked."""
    if entry.status is not Status.REVOKED or entry.revoked_at is None:
        return None
    reason = entry.revocation_reason
    return parse_revocation_field(
        format_asn1_time(entry.revoked_at) + (f",{reason}" if reason else "")
    )


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `2w`, `90m` or a bare number of days."""
    text = text.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"{text!r} is not a duration such as 30d, 12h or 2w")
    return int(number) * (unit or _DURATION_UNITS["d"])


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


class RevocationStore:
    """Revocation and CRL state next to the index, over one `ResultsStore`."""

    def __init__(self, store: ResultsStore) -> None:
        self.store = store
        self.client = store.client
        self._revoke_cas = store.script(_REVOKE_CAS)
        self._publish_crl = store.script(_PUBLISH_CRL)
        self._raise_counter = store.script(_RAISE_COUNTER)

    @_translated
    def revoke(
        self,
        serial: str,
        reason: str = "unspecified",
        when: datetime | None = None,
        *,
        requester: str | None = None,
        request_id: str | None = None,
    ) -> IndexEntry:
        """Mark `serial` revoked in the index, atomically; refuse unknown or revoked serials."""
        reason = canonical_reason(reason)
        serial = canonical_serial(serial)
        moment = (when or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        index_key = self.store.key("index")
        for _ in range(_MAX_CAS_TRIES):
            line = self.client.hget(index_key, serial)
            if line is None:
                raise RevocationRefused(
                    RevocationCode.UNKNOWN_SERIAL, f"serial {serial} was never issued by this CA"
                )
            current = IndexEntry.from_openssl_line(_text(line))
            if current.status is Status.REVOKED:
                if request_id and self.client.get(self._request_key(request_id)) == serial:
                    return current  # this very request, delivered again
                assert current.revoked_at is not None
                raise RevocationRefused(
                    RevocationCode.ALREADY_REVOKED,
                    f"serial {serial} was already revoked on "
                    f"{current.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
                    + (f" ({current.revocation_reason})" if current.revocation_reason else ""),
                )
            revoked = current.revoked(moment, reason)
            event = audit_line(
                "revoked",
                job_id=request_id,
                requester=requester,
                serial=serial,
                reason=reason,
                when=moment,
            )
            args: list[str | int] = [
                self.store.prefix,
                serial,
                _text(line),
                revoked.to_openssl_line(),
                event,
                request_id or "",
                REQUEST_MEMORY_SECONDS,
            ]
            if self._revoke_cas(keys=[], args=args):
                return revoked
        raise Retryable(f"the index entry of serial {serial} kept changing; try again")

    def _request_key(self, request_id: str) -> str:
        return self.store.key("revocation", request_id)

    @_translated
    def revoked_lines(self) -> list[str]:
        """The index line of every revoked certificate, in no particular order.

        One HVALS: about 0.25 s for 100,000 lines, half of what HSCAN takes in redis-py.
        """
        return [_text(line) for line in self.client.hvals(self.store.key("revoked"))]

    @_translated
    def count_revoked(self) -> int:
        return int(self.client.hlen(self.store.key("revoked")))

    @_translated
    def expiring(self, within: timedelta, now: datetime | None = None) -> list[IndexEntry]:
        """Valid (not revoked) entries whose notAfter falls in [now, now + within), soonest first."""
        now = now or datetime.now(UTC)
        horizon = now + within
        soon: list[IndexEntry] = []
        for line in self.store.index_lines():
            if not line.startswith("V\t"):
                continue
            expires = parse_index_time(line.split("\t", 2)[1])
            if now <= expires < horizon:
                soon.append(IndexEntry.from_openssl_line(line))
        return sorted(soon, key=lambda entry: (entry.expires, entry.serial))

    @_translated
    def next_crl_number(self) -> int:
        """Draw the next CRL number (RFC 5280 5.2.3: monotonically increasing)."""
        return int(self.client.incr(self.store.key("crl:number")))

    @_translated
    def raise_crl_number(self, next_number: int) -> int:
        """Make the next number drawn at least `next_number` (OpenSSL's `crlnumber` file)."""
        result = self._raise_counter(keys=[], args=[self.store.key("crl:number"), next_number - 1])
        return int(_text(result)) + 1

    @_translated
    def publish_crl(self, crl: x509.CertificateRevocationList, number: int) -> bool:
        """Make `crl` the latest CRL unless a newer number is published already."""
        pem = crl.public_bytes(serialization.Encoding.PEM).decode("ascii")
        return bool(
            self._publish_crl(
                keys=[],
                args=[
                    self.store.key("crl:latest"),
                    number,
                    pem,
                    crl.last_update_utc.isoformat(),
                    (crl.next_update_utc or crl.last_update_utc).isoformat(),
                ],
            )
        )

    @_translated
    def latest_crl(self) -> x509.CertificateRevocationList | None:
        pem = self.client.hget(self.store.key("crl:latest"), "pem")
        return x509.load_pem_x509_crl(_text(pem).encode("ascii")) if pem else None

    @_translated
    def push_result(self, reply_to: str, result: RevocationResult) -> None:
        """Answer a revocation request on the requester's reply list."""
        key = self.store.reply_key(reply_to)
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(key, result.model_dump_json(exclude_none=True))
        pipe.expire(key, REQUEST_MEMORY_SECONDS)
        pipe.execute()

    @_translated
    def wait_result(self, reply_to: str, request_id: str, timeout: float) -> RevocationResult:
        """Block until the answer to `request_id` arrives; TimeoutError after `timeout` s."""
        key = self.store.reply_key(reply_to)
        deadline = datetime.now(UTC) + timedelta(seconds=timeout)
        while (remaining := (deadline - datetime.now(UTC)).total_seconds()) > 0:
            popped = self.client.blpop([key], timeout=max(remaining, 0.01))
            if popped is None:
                break
            result = RevocationResult.model_validate_json(_text(popped[1]))
            if result.request_id == request_id:
                return result
        raise TimeoutError(
            f"no answer to revocation request {request_id} after {timeout:g} s; it stays "
            "queued and is carried out when a `casign worker` on this queue takes it "
            "(`casign list --revoked` shows it then)"
        )
