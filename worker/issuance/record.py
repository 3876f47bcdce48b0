"""The issuance record: what fixes a to-be-signed certificate, stored sealed before it is signed.

The stored form is canonical JSON (sorted keys, ASCII) naming the profile by name and by the
SHA-256 of its canonical JSON, never holding the profile itself, plus a `mac` member: the
signers' record key over the rest (`worker/record_key.py`), bound to the store prefix and the job
id. A record read back is trusted only once that MAC verifies (`StoredRecord.opened`), and its
profile is then the CA's own of that name and hash (`StoredRecord.with_profile`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from core.errors import RefusalCode, Rejected
from core.index import format_serial
from worker.policy import parse_san_text, san_text
from worker.profiles import Profile
from worker.record_key import RecordKey

SERIAL_BITS = 159  # BR 7.1: positive, below 2**159, at least 64 bits from a CSPRNG


def draw_serial() -> int:
    """A fresh positive serial below 2**159 from the OS CSPRNG."""
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial >= 1 << 64:  # keeps at least 64 random bits and never 0
            return serial


@dataclass(frozen=True, slots=True)
class Applicant:
    """What a certificate takes from its CSR, parsed once: the subject and the public key."""

    subject: x509.Name
    public_key: CertificatePublicKeyTypes
    public_key_der: bytes = field(init=False)  # its subjectPublicKeyInfo, serialized once

    def __post_init__(self) -> None:
        der = self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        object.__setattr__(self, "public_key_der", der)

    @classmethod
    def from_csr_pem(cls, csr_pem: str) -> Applicant:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        return cls(csr.subject, csr.public_key())


@dataclass(frozen=True, slots=True)
class IssuanceRecord:
    """Everything that fixes a to-be-signed certificate, stored before it is signed.

    The names stay `x509.GeneralName` objects; only the stored JSON holds them as text.
    """

    job_id: str
    fingerprint: str
    serial: int
    not_before: datetime
    not_after: datetime
    profile: Profile
    subject_alternative_names: tuple[x509.GeneralName, ...]
    csr_pem: str
    requester: str | None
    reply_to: str | None

    @property
    def serial_hex(self) -> str:
        return format_serial(self.serial)

    def sealed(self, key: RecordKey, store_prefix: str, profile_digest: str) -> str:
        """The stored form under `store_prefix`: the canonical record and its MAC.

        `profile_digest` is the SHA-256 of the profile's canonical JSON
        (`SigningAuthority.profile_digest`, computed once per profile).
        """
        canonical = _canonical(
            {
                "job_id": self.job_id,
                "fingerprint": self.fingerprint,
                "serial": self.serial_hex,
                "not_before": int(self.not_before.timestamp()),
                "not_after": int(self.not_after.timestamp()),
                "profile": {"name": self.profile.name, "sha256": profile_digest},
                "san": [san_text(name) for name in self.subject_alternative_names],
                "csr_pem": self.csr_pem,
                "requester": self.requester,
                "reply_to": self.reply_to,
            }
        )
        mac = key.mac(store_prefix, self.job_id, canonical.encode())
        # The MAC joins the object as its last member; `opened` takes it out and re-canonicalises.
        return f'{canonical[:-1]},"mac":{json.dumps(mac)}}}'


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record read back from the store whose MAC verified; its profile still a name and hash."""

    job_id: str
    fingerprint: str
    serial: int
    not_before: datetime
    not_after: datetime
    profile_name: str
    profile_digest: str
    subject_alternative_names: tuple[x509.GeneralName, ...]
    csr_pem: str
    requester: str | None
    reply_to: str | None

    @classmethod
    def opened(
        cls, text: str | None, job_id: str, key: RecordKey, store_prefix: str
    ) -> StoredRecord:
        """The record stored for `job_id` under `store_prefix`, if the signers' MAC over it
        verifies; else Rejected (`store.record_invalid`): nothing of it is used."""
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise _invalid(job_id, "is not a record")
        mac = data.pop("mac", None)
        if not key.verifies(store_prefix, job_id, _canonical(data).encode(), mac):
            raise _invalid(job_id, "does not carry the signers' MAC (forged, altered or moved)")
        try:
            profile = data["profile"]
            record = cls(
                job_id=data["job_id"],
                fingerprint=data["fingerprint"],
                serial=int(data["serial"], 16),
                not_before=datetime.fromtimestamp(data["not_before"], UTC),
                not_after=datetime.fromtimestamp(data["not_after"], UTC),
                profile_name=profile["name"],
                profile_digest=profile["sha256"],
                subject_alternative_names=tuple(parse_san_text(text) for text in data["san"]),
                csr_pem=data["csr_pem"],
                requester=data["requester"],
                reply_to=data["reply_to"],
            )
        except (KeyError, TypeError, ValueError, Rejected):
            raise _invalid(job_id, "is sealed but not in this casign's record layout") from None
        if record.job_id != job_id:
            raise _invalid(job_id, f"names job {record.job_id!r}")
        return record

    def with_profile(self, profile: Profile | None, digest: str | None) -> IssuanceRecord:
        """The record with the CA's own profile of its name, whose SHA-256 is `digest`; Rejected
        (`store.profile_changed`) when there is none now, or it changed since the record."""
        if profile is None or profile.name != self.profile_name or digest != self.profile_digest:
            now = "is no longer offered" if profile is None else "has changed in profiles.toml"
            raise Rejected(
                RefusalCode.STORE_PROFILE_CHANGED,
                f"profile {self.profile_name!r}, under which job {self.job_id!r} was reserved, "
                f"{now}; send the request again under a new job id",
            )
        return IssuanceRecord(
            job_id=self.job_id,
            fingerprint=self.fingerprint,
            serial=self.serial,
            not_before=self.not_before,
            not_after=self.not_after,
            profile=profile,
            subject_alternative_names=self.subject_alternative_names,
            csr_pem=self.csr_pem,
            requester=self.requester,
            reply_to=self.reply_to,
        )


# One encoder for every record: json.dumps with these options builds a new one each call.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _canonical(data: dict[str, Any]) -> str:
    return _CANONICAL_JSON.encode(data)


def _invalid(job_id: str, why: str) -> Rejected:
    return Rejected(
        RefusalCode.STORE_RECORD_INVALID,
        f"the stored record of job {job_id!r} {why}; it is not signed",
    )
