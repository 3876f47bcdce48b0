"""Issuance as named steps, for one job or a batch.

check_request -> reserve_serial (record the intent) -> build_tbs -> sign -> verify_issued ->
publish, in the order Boulder's IssueCertificate keeps: nothing is signed before its serial
and the inputs that rebuild its to-be-signed certificate byte for byte are in the store.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from core.audit import audit_line
from core.errors import IssuanceFault, RefusalCode, Rejected, Retryable
from core.index import IndexEntry, Status, format_serial, openssl_oneline
from core.messages import JobResult, parse_sign_request
from store.results import Intent, Issued, Refusal, Reservation, ResultsStore
from worker.access import AccessPolicy, AllowedProducer, check_allowed
from worker.authority import SigningAuthority, digest_algorithm
from worker.policy import CheckedRequest, check_request, parse_san_text
from worker.profiles import Profile

log = logging.getLogger("casign.issuance")

SERIAL_BITS = 159  # BR 7.1: positive, below 2**159, at least 64 bits from a CSPRNG
_MAX_SERIAL_DRAWS = 5
# DER of the basicConstraints OID (2.5.29.19), and of the whole extension when it is the empty
# SEQUENCE that means CA:FALSE (RFC 5280 4.2.1.9), non-critical or critical: checked on the
# signed bytes without parsing every extension back.
_BASIC_CONSTRAINTS_OID = bytes.fromhex("0603551d13")
_BASIC_CONSTRAINTS_END_ENTITY = (
    bytes.fromhex("0603551d1304023000"),
    bytes.fromhex("0603551d130101ff04023000"),
)


def draw_serial() -> int:
    """A fresh positive serial below 2**159 from the OS CSPRNG."""
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial >= 1 << 64:  # keeps at least 64 random bits and never 0
            return serial


@dataclass(frozen=True, slots=True)
class IssuanceRecord:
    """Everything that fixes a to-be-signed certificate, stored before it is signed."""

    job_id: str
    fingerprint: str
    serial: int
    not_before: datetime
    not_after: datetime
    profile: Profile
    subject_alternative_names: tuple[str, ...]
    csr_pem: str
    requester: str | None
    reply_to: str | None

    def to_json(self, profile_json: dict[str, Any] | None = None) -> str:
        return json.dumps(
            {
                "job_id": self.job_id,
                "fingerprint": self.fingerprint,
                "serial": format_serial(self.serial),
                "not_before": int(self.not_before.timestamp()),
                "not_after": int(self.not_after.timestamp()),
                "profile": profile_json or self.profile.model_dump(mode="json"),
                "san": list(self.subject_alternative_names),
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
            subject_alternative_names=tuple(data["san"]),
            csr_pem=data["csr_pem"],
            requester=data.get("requester"),
            reply_to=data.get("reply_to"),
        )


def _san_text(name: x509.GeneralName) -> str:
    prefix = {
        x509.DNSName: "DNS",
        x509.IPAddress: "IP",
        x509.RFC822Name: "email",
        x509.UniformResourceIdentifier: "URI",
    }[type(name)]
    return f"{prefix}:{name.value}"


def make_record(
    checked: CheckedRequest,
    authority: SigningAuthority,
    now: datetime,
    reply_to: str | None,
    fingerprint: str,
) -> IssuanceRecord:
    """Draw the serial and fix the validity: the intent that `reserve_serials` stores."""
    not_before = now.replace(microsecond=0)
    not_after = not_before + timedelta(days=checked.days)
    if checked.profile.max_days == "baseline":
        # BR 1.6.1: the validity period includes both ends, so a 200-day maximum ends 1 s early.
        not_after -= timedelta(seconds=1)
    if not_after > authority.intermediate.not_valid_after_utc:
        raise Rejected(
            RefusalCode.VALIDITY_TOO_LONG,
            f"days {checked.days} would outlive the intermediate CA, which expires "
            f"{authority.intermediate.not_valid_after_utc:%Y-%m-%d}",
        )
    return IssuanceRecord(
        job_id=checked.request.job_id,
        fingerprint=fingerprint,
        serial=draw_serial(),
        not_before=not_before,
        not_after=not_after,
        profile=checked.profile,
        subject_alternative_names=tuple(_san_text(n) for n in checked.subject_alternative_names),
        csr_pem=checked.request.csr_pem,
        requester=checked.request.requester,
        reply_to=reply_to,
    )


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


def build_tbs(
    record: IssuanceRecord,
    applicant: Applicant,
    authority: SigningAuthority,
) -> x509.CertificateBuilder:
    """The to-be-signed certificate, a pure function of the record and the CA."""
    public_key = applicant.public_key
    profile_extensions = authority.extensions_for(record.profile)
    rsa_subject = isinstance(public_key, rsa.RSAPublicKey)
    pairs: list[tuple[x509.ExtensionType, bool]] = list(profile_extensions.before_key_ids)
    if record.profile.subject_key_identifier:
        pairs.append((x509.SubjectKeyIdentifier.from_public_key(public_key), False))
    pairs.append((profile_extensions.authority_key_identifier, False))
    pairs.extend(profile_extensions.usage_rsa if rsa_subject else profile_extensions.usage_other)
    pairs.extend(profile_extensions.locations)
    if record.subject_alternative_names:
        names = [parse_san_text(text) for text in record.subject_alternative_names]
        pairs.append((x509.SubjectAlternativeName(names), False))
    return x509.CertificateBuilder(
        issuer_name=authority.intermediate.subject,
        subject_name=applicant.subject,
        public_key=public_key,
        serial_number=record.serial,
        not_valid_before=record.not_before,
        not_valid_after=record.not_after,
        extensions=[x509.Extension(value.oid, critical, value) for value, critical in pairs],
    )


def sign(
    builder: x509.CertificateBuilder, record: IssuanceRecord, authority: SigningAuthority
) -> x509.Certificate:
    """Ask the key backend to sign; an HSM failure is `Retryable` (raised by the backend)."""
    return builder.sign(authority.key, digest_algorithm(record.profile.digest))


def verify_issued(
    certificate: x509.Certificate,
    record: IssuanceRecord,
    applicant: Applicant,
    authority: SigningAuthority,
    now: datetime,
) -> None:
    """Check the certificate against the chain and against the intent; raise IssuanceFault."""
    try:
        certificate.verify_directly_issued_by(authority.intermediate)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise IssuanceFault(
            f"job {record.job_id}: the issued certificate does not verify against the "
            f"intermediate ({type(exc).__name__})"
        ) from exc
    if (
        certificate.serial_number != record.serial
        or certificate.not_valid_after_utc != record.not_after
        # The exact DER of the subject's key must be what was signed (cheaper than parsing).
        or applicant.public_key_der not in certificate.tbs_certificate_bytes
        or certificate.not_valid_before_utc > now + timedelta(seconds=5)
    ):
        raise IssuanceFault(f"job {record.job_id}: the signed certificate differs from its record")
    tbs = certificate.tbs_certificate_bytes
    if tbs.count(_BASIC_CONSTRAINTS_OID) != 1 or not any(
        encoding in tbs for encoding in _BASIC_CONSTRAINTS_END_ENTITY
    ):
        raise IssuanceFault(f"job {record.job_id}: refusing to hand out a CA certificate")


def to_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def index_line(item: _Work) -> str:
    """The job's `index.txt` line, from what the certificate was built of."""
    return IndexEntry(
        status=Status.VALID,
        expires=item.record.not_after,
        serial=item.record.serial,
        subject=openssl_oneline(item.applicant.subject),
    ).to_openssl_line()


def _stamped(result: JobResult, fingerprints: dict[str, str]) -> JobResult:
    fingerprint = fingerprints.get(result.job_id)
    return result.model_copy(update={"fingerprint": fingerprint}) if fingerprint else result


def _refused(job_id: str, code: str, message: str) -> JobResult:
    return JobResult(job_id=job_id, status="refused", code=code, message=message)


@dataclass
class _Work:
    record: IssuanceRecord
    applicant: Applicant
    tbs: x509.CertificateBuilder | None = None  # built from `record`; None when it changed


@dataclass
class _Batch:
    """What one batch has come to so far."""

    now: datetime
    reply_to: str | None
    order: list[str] = field(default_factory=list)
    results: dict[str, JobResult] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)
    work: dict[str, _Work] = field(default_factory=dict)
    intents: dict[str, Intent] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    requesters: dict[str, str | None] = field(default_factory=dict)
    profiles: dict[str, str] = field(default_factory=dict)
    audit: list[str] = field(default_factory=list)

    def refuse(self, job_id: str, refusal: Rejected, record: bool) -> None:
        """Answer `job_id` with `refusal`; `record` keeps it under the job id for redeliveries."""
        self.results[job_id] = _refused(job_id, refusal.code, refusal.message)
        self.work.pop(job_id, None)
        self.intents.pop(job_id, None)
        fingerprint = self.fingerprints.get(job_id)
        if record and fingerprint is not None:
            self.refusals.append(Refusal(job_id, fingerprint, refusal.code, refusal.message))
        self.audit.append(
            audit_line(
                "refused",
                job_id=job_id,
                requester=self.requesters.get(job_id),
                profile=self.profiles.get(job_id),
                reason=refusal.code,
                when=self.now,
            )
        )


class BatchSigner:
    """Signs batches of jobs for one authority, publishing each batch in one round trip."""

    def __init__(
        self,
        authority: SigningAuthority,
        store: ResultsStore,
        access: AccessPolicy | None = None,
    ) -> None:
        self.authority = authority
        self.store = store
        self.access = access
        self._profile_json: dict[str, tuple[Profile, dict[str, Any]]] = {}

    def sign_batch(
        self,
        raw_jobs: Iterable[object],
        reply_to: str | None = None,
        producer: str | None = None,
        signature: str | None = None,
    ) -> list[JobResult]:
        """Sign, verify and publish every acceptable job; refuse the rest with a code."""
        jobs = list(raw_jobs)
        identity: AllowedProducer | None = None
        if self.access is not None:
            try:
                identity = self.access.authenticate(producer, signature, reply_to, jobs)
            except Rejected as refusal:
                return self._refuse_whole_batch(jobs, reply_to, producer, refusal)
        batch = _Batch(now=datetime.now(UTC), reply_to=reply_to)
        for raw in jobs:
            self._admit(raw, batch, identity)
        if identity is not None and self.access is not None and batch.work:
            # A redelivered job already known to the store costs no token.
            known = self.store.known_jobs(batch.work)
            new_jobs = [job_id for job_id in batch.work if job_id not in known]
            granted = self.access.take_tokens(self.store, identity, len(new_jobs))
            for job_id in new_jobs[granted:]:
                batch.refuse(
                    job_id,
                    Rejected(
                        RefusalCode.AUTH_RATE_LIMITED,
                        f"producer {identity.name!r} is over its rate; retry later",
                    ),
                    record=False,
                )
        self.authority.check_own_chain(batch.now)
        self._reserve(batch)
        answered = [_stamped(result, batch.fingerprints) for result in batch.results.values()]
        issued = self._sign_all(batch)
        self.store.publish(issued, batch.refusals, answered, reply_to, batch.audit)
        return [_stamped(batch.results[job_id], batch.fingerprints) for job_id in batch.order]

    def _admit(self, raw: object, batch: _Batch, identity: AllowedProducer | None) -> None:
        """Parse and check one job; it joins `batch.work` or gets its refusal."""
        try:
            request = parse_sign_request(raw)
        except ValueError as exc:
            job_id = raw.get("job_id") if isinstance(raw, dict) else None
            if not isinstance(job_id, str) or not 0 < len(job_id) <= 128:
                log.warning("dropped a job without a usable job_id: %s", exc)
                return
            if job_id in batch.results or job_id in batch.work:
                return  # a malformed twin of a job already in this batch changes nothing
            batch.order.append(job_id)
            batch.refuse(job_id, Rejected(RefusalCode.JOB_MALFORMED, str(exc)), record=False)
            return
        job_id = request.job_id
        if job_id in batch.results or job_id in batch.work:
            return  # the same job twice in one batch: one answer serves both
        batch.order.append(job_id)
        fingerprint = batch.fingerprints[job_id] = request.fingerprint()
        requester = identity.name if identity is not None else request.requester
        batch.requesters[job_id] = requester
        batch.profiles[job_id] = request.profile
        try:
            checked = check_request(request, self.authority.profiles, self.authority.common_names)
            if identity is not None:
                check_allowed(
                    identity, request.profile, checked.subject, checked.subject_alternative_names
                )
            record = make_record(checked, self.authority, batch.now, batch.reply_to, fingerprint)
        except Rejected as refusal:
            batch.refuse(job_id, refusal, record=True)
            return
        record = replace(record, requester=requester)
        applicant = Applicant(checked.subject, checked.public_key)
        try:
            # Built before the serial is reserved, so a request that passed policy but cannot be
            # encoded is refused here instead of leaving a reservation nothing can sign.
            tbs = build_tbs(record, applicant, self.authority)
        except ValueError as exc:
            batch.refuse(
                job_id,
                Rejected(RefusalCode.CSR_MALFORMED, f"the request cannot be encoded ({exc})"),
                record=True,
            )
            return
        batch.work[job_id] = _Work(record, applicant, tbs)
        batch.intents[job_id] = Intent(
            job_id, fingerprint, format_serial(record.serial), self._record_json(record)
        )

    def _refuse_whole_batch(
        self, jobs: list[object], reply_to: str | None, producer: str | None, refusal: Rejected
    ) -> list[JobResult]:
        """An unauthenticated batch: answer and audit every job; record nothing under its ids."""
        log.warning("refused a batch of %d job(s): %s", len(jobs), refusal)
        results = [
            _refused(raw["job_id"], refusal.code, refusal.message)
            for raw in jobs
            if isinstance(raw, dict) and isinstance(raw.get("job_id"), str)
        ]
        lines = [
            audit_line("refused", job_id=result.job_id, requester=producer, reason=refusal.code)
            for result in results
        ] or [audit_line("refused", requester=producer, reason=refusal.code)]
        self.store.publish([], [], results, reply_to, lines)
        return results

    def _record_json(self, record: IssuanceRecord) -> str:
        cached = self._profile_json.get(record.profile.name)
        if cached is None or cached[0] is not record.profile:
            cached = (record.profile, record.profile.model_dump(mode="json"))
            self._profile_json[record.profile.name] = cached
        return record.to_json(cached[1])

    def _reserve(self, batch: _Batch) -> None:
        """Store every intent; settle redeliveries and reused job ids from what is found."""
        intents = batch.intents
        for _ in range(_MAX_SERIAL_DRAWS):
            if not intents:
                return
            retry: dict[str, Intent] = {}
            for reservation in self.store.reserve(intents.values()):
                job_id = reservation.job_id
                outcome = self._settle(reservation, batch.work[job_id], intents[job_id])
                if outcome is None:
                    continue
                if isinstance(outcome, Rejected):
                    batch.refuse(job_id, outcome, record=False)
                elif isinstance(outcome, JobResult):
                    batch.results[job_id] = outcome
                    del batch.work[job_id]
                else:
                    retry[job_id] = outcome
            intents = retry
        raise Retryable("could not draw an unused serial after several tries")

    def _settle(
        self, reservation: Reservation, item: _Work, intent: Intent
    ) -> JobResult | Rejected | Intent | None:
        """None: sign `item` as it is. A JobResult: answered before; Rejected: refuse it now.

        An Intent: try again with a new serial.
        """
        if reservation.state == "reserved":
            return None
        if reservation.state == "serial_taken":
            item.record, item.tbs = replace(item.record, serial=draw_serial()), None
            return Intent(
                intent.job_id,
                intent.fingerprint,
                format_serial(item.record.serial),
                self._record_json(item.record),
            )
        if reservation.fingerprint != intent.fingerprint:
            return Rejected(
                RefusalCode.JOB_ID_REUSED,
                f"job id {intent.job_id!r} was already used for a different request",
            )
        if reservation.state == "issued":
            return JobResult(
                job_id=intent.job_id,
                status="issued",
                serial=reservation.serial,
                certificate_pem=reservation.certificate_pem,
            )
        if reservation.state == "refused":
            return _refused(intent.job_id, reservation.code or "", reservation.message or "")
        # Reserved by an earlier delivery that never published: sign that record again.
        assert reservation.record is not None
        stored = IssuanceRecord.from_json(reservation.record)
        item.record, item.tbs = stored, None
        return None

    def _sign_all(self, batch: _Batch) -> list[Issued]:
        issued: list[Issued] = []
        for job_id, item in batch.work.items():
            issued.append(self._issue(job_id, item, batch.now))
            batch.results[job_id] = JobResult(
                job_id=job_id,
                status="issued",
                serial=issued[-1].serial,
                certificate_pem=issued[-1].certificate_pem,
            )
        return issued

    def _issue(self, job_id: str, item: _Work, now: datetime) -> Issued:
        certificate = self.issue_record(item.record, item.applicant, now, item.tbs)
        serial = format_serial(item.record.serial)
        return Issued(
            job_id,
            item.record.fingerprint,
            serial,
            to_pem(certificate),
            index_line(item),
            audit_line(
                "issued",
                job_id=job_id,
                requester=item.record.requester,
                serial=serial,
                profile=item.record.profile.name,
                when=now,
            ),
        )

    def issue_record(
        self,
        record: IssuanceRecord,
        applicant: Applicant,
        now: datetime,
        tbs: x509.CertificateBuilder | None = None,
    ) -> x509.Certificate:
        """build_tbs (unless given) -> sign -> verify_issued for one stored record."""
        if tbs is None:
            tbs = build_tbs(record, applicant, self.authority)
        certificate = sign(tbs, record, self.authority)
        verify_issued(certificate, record, applicant, self.authority, now)
        return certificate

    def report_failure(
        self, raw_jobs: Iterable[object], reply_to: str | None, error: Exception
    ) -> None:
        """Tell the producer its jobs failed inside the signer (nothing was published for them)."""
        failed = [
            JobResult(
                job_id=raw["job_id"],
                status="failed",
                code="internal.error",
                message=f"the signer failed: {type(error).__name__}: {error}",
            )
            for raw in raw_jobs
            if isinstance(raw, dict) and isinstance(raw.get("job_id"), str)
        ]
        self.store.publish([], [], failed, reply_to)

    def recover_pending(self) -> list[JobResult]:
        """Sign and publish every job that was reserved but never published (after a crash)."""
        recovered: list[JobResult] = []
        now = datetime.now(UTC)
        for job_id, text in self.store.pending_records():
            record = IssuanceRecord.from_json(text)
            issued = self._issue(job_id, _Work(record, Applicant.from_csr_pem(record.csr_pem)), now)
            self.store.publish([issued], [], [], record.reply_to)
            recovered.append(
                JobResult(
                    job_id=job_id,
                    status="issued",
                    serial=issued.serial,
                    certificate_pem=issued.certificate_pem,
                )
            )
        return recovered
