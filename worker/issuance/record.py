"""The issuance record: what fixes a to-be-signed certificate, stored before it is signed."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from core.index import format_serial
from worker.policy import parse_san_text, san_text
from worker.profiles import Profile

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

    @classmethod
    def from_csr_pem(cls, csr_pem: str) -> Applicant:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        return cls(csr.subject, csr.public_key())

    @property
    def public_key_der(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


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

    def to_json(self, profile_json: dict[str, Any] | None = None) -> str:
        """The stored form; `profile_json` is the profile already dumped (it is the same per job)."""
        return json.dumps(
            {
                "job_id": self.job_id,
                "fingerprint": self.fingerprint,
                "serial": self.serial_hex,
                "not_before": int(self.not_before.timestamp()),
                "not_after": int(self.not_after.timestamp()),
                "profile": profile_json or self.profile.model_dump(mode="json"),
                "san": [san_text(name) for name in self.subject_alternative_names],
                "csr_pem": self.csr_pem,
                "requester": self.requester,
                "reply_to": self.reply_to,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> IssuanceRecord:
        data = json.loads(text)
        return cls(
            job_id=data["job_id"],
            fingerprint=data["fingerprint"],
            serial=int(data["serial"], 16),
            not_before=datetime.fromtimestamp(data["not_before"], UTC),
            not_after=datetime.fromtimestamp(data["not_after"], UTC),
            profile=Profile.model_validate(data["profile"]),
            subject_alternative_names=tuple(parse_san_text(text) for text in data["san"]),
            csr_pem=data["csr_pem"],
            requester=data.get("requester"),
            reply_to=data.get("reply_to"),
        )
