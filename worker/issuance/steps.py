"""The nine steps of issuance, each a function from one typed value to the next.

1 `authenticate` -> `Authenticated`; 2 `admit` (+ `within_rate`) -> `Admitted`;
3 `fix_record` -> `Fixed`; 4 `build_tbs` -> `Built`; 5 `lint` -> `Built` (the same, linted);
6 `reserve` -> `Reserved`; 7 `sign` -> `Signed`; 8 `verify` -> `Verified`;
9 `publish` -> `Issued`.
A step refuses by raising `Rejected` (step 1 the whole batch, steps 2-5 one job) or by
returning `Refused`/`Answered` (step 6, which settles a whole batch in one store call); steps
7-8 raise whatever the key or the check raises. The package docstring tells the whole path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.audit import audit_line
from core.auth import MessageKind
from core.errors import IssuanceFault, RefusalCode, Rejected, Retryable
from core.index import IndexEntry, Status, openssl_oneline
from core.messages import Envelope, JobResult, SignRequest, parse_sign_request
from store.envelopes import EnvelopeLedger
from store.results import (
    UNLEASED,
    Closure,
    Intent,
    Issued,
    LeaseTerms,
    Refusal,
    Reservation,
    ResultsStore,
)
from worker.access import AccessPolicy, AllowedProducer, check_allowed
from worker.authority import SigningAuthority, digest_algorithm
from worker.issuance.record import Applicant, IssuanceRecord, StoredRecord, draw_serial
from worker.key_identifier import subject_key_identifier
from worker.lint import lint_tbs
from worker.policy import CheckedRequest, check_request
from worker.profiles import Profile, ProfileSet
from worker.subject import build_subject

log = logging.getLogger("casign.issuance")

MAX_SERIAL_DRAWS = 5
# DER of the basicConstraints OID (2.5.29.19), and of the whole extension when it is the empty
# SEQUENCE that means CA:FALSE (RFC 5280 4.2.1.9), non-critical or critical: checked on the
# signed bytes without parsing every extension back.
_BASIC_CONSTRAINTS_OID = bytes.fromhex("0603551d13")
_CLOCK_TOLERANCE = timedelta(seconds=5)
_BASIC_CONSTRAINTS_END_ENTITY = (
    bytes.fromhex("0603551d1304023000"),
    bytes.fromhex("0603551d130101ff04023000"),
)


# -- 1. authenticate ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A batch whose sender is known (None on a signer open to any producer), and its moment."""

    jobs: tuple[object, ...]
    reply_to: str | None
    producer: AllowedProducer | None
    now: datetime
    envelope: Envelope | None = None  # remembered once the batch is published (replay cache)

    def requester_of(self, request: SignRequest) -> str | None:
        """Who the record and the audit log name: the producer that signed, else the request's."""
        return self.producer.name if self.producer is not None else request.requester


def authenticate(
    jobs: Sequence[object],
    reply_to: str | None,
    envelope: Envelope | None,
    access: AccessPolicy | None,
    ledger: EnvelopeLedger | None,
    now: datetime,
    judged_at: datetime | None = None,
) -> Authenticated:
    """Step 1: the listed producer that sealed the batch for this CA and queue, in time, once.

    The envelope's time is judged at `judged_at` when given (an air-gap bundle: when the relay
    exported it), else `now`. Raise Rejected otherwise (auth.*); an open signer (no access
    policy) takes any batch.
    """
    if access is None:
        return Authenticated(tuple(jobs), reply_to, None, now)
    identity = access.authenticate(
        envelope, MessageKind.SIGN, reply_to, list(jobs), (judged_at or now).timestamp()
    )
    assert envelope is not None and ledger is not None
    if ledger.seen(identity.name, envelope.nonce):
        raise Rejected(
            RefusalCode.AUTH_REPLAYED,
            f"producer {identity.name!r}'s message {envelope.nonce} was done before; "
            "a replayed message is not served again",
        )
    return Authenticated(tuple(jobs), reply_to, identity, now, envelope)


# -- 2. admit ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """One job as read off its batch: the validated message and its content's fingerprint."""

    request: SignRequest
    fingerprint: str

    @property
    def job_id(self) -> str:
        return self.request.job_id


def receive(raw: object) -> Received:
    """Validate one job's message and fingerprint it, once; raise ValueError naming the field."""
    request = parse_sign_request(raw)
    return Received(request, request.fingerprint())


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request that passed the CSR policy and its producer's rights; its CSR parsed once."""

    checked: CheckedRequest
    fingerprint: str
    requester: str | None

    @property
    def job_id(self) -> str:
        return self.checked.request.job_id


@dataclass(frozen=True, slots=True)
class Refused:
    """A job refused; `recorded` keeps the refusal under its job id for later deliveries."""

    job_id: str
    refusal: Rejected
    recorded: bool


def admit(
    job: Received, batch: Authenticated, profiles: ProfileSet, ca_common_names: Iterable[str]
) -> Admitted:
    """Step 2: the CSR policy, then the producer's profiles and names; raise Rejected."""
    checked = check_request(job.request, profiles, ca_common_names)
    if batch.producer is not None:
        check_allowed(
            batch.producer,
            job.request.profile,
            checked.subject,
            checked.subject_alternative_names,
        )
    return Admitted(checked, job.fingerprint, batch.requester_of(job.request))


def within_rate(
    admitted: Sequence[Admitted],
    batch: Authenticated,
    access: AccessPolicy | None,
    store: ResultsStore,
) -> tuple[list[Admitted], list[Refused]]:
    """Step 2, the producer's rate: (granted, refused); a job the store knows costs no token."""
    producer = batch.producer
    if producer is None or access is None or not admitted:
        return list(admitted), []
    known = store.known_jobs(job.job_id for job in admitted)
    new = [job.job_id for job in admitted if job.job_id not in known]
    over = set(new[access.take_tokens(store, producer, len(new)) :])
    refusal = Rejected(
        RefusalCode.AUTH_RATE_LIMITED, f"producer {producer.name!r} is over its rate; retry later"
    )
    return (
        [job for job in admitted if job.job_id not in over],
        [Refused(job_id, refusal, recorded=False) for job_id in new if job_id in over],
    )


# -- 3. fix the record -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fixed:
    """The record that fixes a certificate (serial, validity, names), and whom it is for."""

    record: IssuanceRecord
    applicant: Applicant

    @property
    def job_id(self) -> str:
        return self.record.job_id


def fix_record(job: Admitted, authority: SigningAuthority, batch: Authenticated) -> Fixed:
    """Step 3: draw the serial and fix the validity; raise Rejected when it outlives the CA."""
    checked = job.checked
    not_before, not_after = validity(
        checked.profile, checked.days, batch.now, authority.intermediate
    )
    record = IssuanceRecord(
        job_id=job.job_id,
        fingerprint=job.fingerprint,
        serial=draw_serial(),
        not_before=not_before,
        not_after=not_after,
        profile=checked.profile,
        subject_alternative_names=checked.subject_alternative_names,
        csr_pem=checked.request.csr_pem,
        requester=job.requester,
        reply_to=batch.reply_to,
    )
    return Fixed(record, Applicant(checked.subject, checked.public_key))


def validity(
    profile: Profile, days: int, now: datetime, intermediate: x509.Certificate
) -> tuple[datetime, datetime]:
    """(notBefore, notAfter): backdated by the profile's skew but not before the CA's notBefore,
    `days` long; past the CA's notAfter it is cut to it if the profile says so, else refused."""
    not_before = max(
        now.replace(microsecond=0) - timedelta(seconds=profile.backdate_seconds),
        intermediate.not_valid_before_utc,
    )
    not_after = not_before + timedelta(days=days)
    if profile.max_days == "baseline":
        # BR 1.6.1: the validity period includes both ends, so a 200-day maximum ends 1 s early.
        not_after -= timedelta(seconds=1)
    ca_expires = intermediate.not_valid_after_utc
    if not_after > ca_expires:
        if not profile.clamp_not_after_to_ca:
            raise Rejected(
                RefusalCode.VALIDITY_TOO_LONG,
                f"days {days} would outlive the intermediate CA, which expires "
                f"{ca_expires:%Y-%m-%d}",
            )
        not_after = ca_expires
    return not_before, not_after


# -- 4. build the TBS --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Built:
    """A record and its to-be-signed certificate, which is a pure function of it and the CA."""

    record: IssuanceRecord
    applicant: Applicant
    tbs: x509.CertificateBuilder

    @property
    def job_id(self) -> str:
        return self.record.job_id


def build_tbs(job: Fixed, authority: SigningAuthority) -> Built:
    """Step 4: the to-be-signed certificate; raise Rejected when the request cannot be encoded.

    It comes before the reservation, so such a request never leaves a serial nothing can sign.
    """
    try:
        tbs = tbs_of(job.record, job.applicant, authority)
    except ValueError as exc:
        raise Rejected(
            RefusalCode.CSR_MALFORMED, f"the request cannot be encoded ({exc})"
        ) from None
    return Built(job.record, job.applicant, tbs)


def tbs_of(
    record: IssuanceRecord, applicant: Applicant, authority: SigningAuthority
) -> x509.CertificateBuilder:
    """The builder for `record`'s certificate, extensions in the guide's order."""
    public_key = applicant.public_key
    # The profile's own extensions come built once per authority; only the subject's are new.
    extensions = authority.extensions_for(record.profile)
    built: list[x509.Extension[x509.ExtensionType]] = list(extensions.before_key_ids)
    if record.profile.subject_key_identifier:
        key_id = subject_key_identifier(applicant.public_key_der)
        built.append(x509.Extension(key_id.oid, False, key_id))
    built.append(extensions.authority_key_identifier)
    rsa_subject = isinstance(public_key, rsa.RSAPublicKey)
    built.extend(extensions.usage_rsa if rsa_subject else extensions.usage_other)
    built.extend(extensions.locations_for(record.serial))
    if record.subject_alternative_names:
        names = x509.SubjectAlternativeName(record.subject_alternative_names)
        built.append(x509.Extension(names.oid, False, names))
    return x509.CertificateBuilder(
        issuer_name=authority.intermediate.subject,
        subject_name=applicant.subject,
        public_key=public_key,
        serial_number=record.serial,
        not_valid_before=record.not_before,
        not_valid_after=record.not_after,
        extensions=built,
    )


# -- 5. lint -----------------------------------------------------------------------------------


def lint(job: Built, authority: SigningAuthority) -> Built:
    """Step 5: the profile's linter on the TBS signed with a throwaway key like the CA's; raise
    Rejected (`lint.failed`) on any error or fatal finding, else hand the job on unchanged.

    It comes before the reservation, as in Boulder (lint, then store the precertificate's
    record, then sign): a refused job leaves no serial and no record behind, and what recovery
    or a later delivery signs from a stored record is what was linted. A serial that `reserve`
    draws again only changes the serial number, which no lint rule depends on.
    """
    profile = job.record.profile
    lint_tbs(job.tbs, authority.key, digest_algorithm(profile.digest), profile.lint)
    return job


# -- 6. reserve --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reserved:
    """A record the store holds under its job id and serial: sign exactly this."""

    record: IssuanceRecord
    applicant: Applicant
    tbs: x509.CertificateBuilder

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @classmethod
    def stored(cls, record: IssuanceRecord, authority: SigningAuthority) -> Reserved:
        """A record read back from the store (recovery): its CSR parsed, the subject built from
        it as admission built it, its TBS rebuilt."""
        requested = Applicant.from_csr_pem(record.csr_pem)
        applicant = Applicant(
            build_subject(requested.subject, record.profile), requested.public_key
        )
        return cls(record, applicant, tbs_of(record, applicant, authority))


@dataclass(frozen=True, slots=True)
class Answered:
    """A job an earlier delivery already answered (issued, refused or failed): the same answer."""

    result: JobResult

    @property
    def job_id(self) -> str:
        return self.result.job_id


@dataclass(frozen=True, slots=True)
class Left:
    """A job another live signing process holds under its lease: it answers it, not us."""

    job_id: str


def reserve(
    built: Sequence[Built],
    store: ResultsStore,
    authority: SigningAuthority,
    lease: LeaseTerms = UNLEASED,
) -> list[Reserved | Answered | Refused | Left]:
    """Step 6: store every record, sealed, before it is signed, in one round trip per draw,
    held under `lease` (this process's; see `store.leases`).

    A serial found taken is drawn again; a job the store knows is settled from what it holds;
    a job reserved under another process's live lease is left to that process.
    An earlier delivery's record is signed only if the signers' MAC over it verifies and its
    profile is still the CA's; else the job is refused and closed in the store (one more round
    trip), so that neither a redelivery nor recovery signs it. Raise Retryable when serials keep
    colliding (or the store is unavailable).
    """
    waiting = {job.job_id: job for job in built}
    settled: dict[str, Reserved | Answered | Refused | Left] = {}
    unusable: list[Closure] = []
    for _ in range(MAX_SERIAL_DRAWS):
        if not waiting:
            break
        intents = [
            Intent(
                job.job_id,
                job.record.fingerprint,
                job.record.serial_hex,
                job.record.sealed(
                    authority.record_key,
                    store.prefix,
                    authority.profile_digest(job.record.profile),
                ),
            )
            for job in waiting.values()
        ]
        redraw: dict[str, Built] = {}
        for reservation in store.reserve(intents, lease):
            job = waiting[reservation.job_id]
            if reservation.state == "leased":
                settled[job.job_id] = Left(job.job_id)
                continue
            if reservation.state == "serial_taken":
                record = replace(job.record, serial=draw_serial())
                redraw[job.job_id] = Built(
                    record, job.applicant, tbs_of(record, job.applicant, authority)
                )
                continue
            try:
                settled[job.job_id] = _settle(reservation, job, authority, store.prefix)
            except Rejected as refusal:  # the stored record is not one to sign
                log.error("job %s refused, not signed: %s", job.job_id, refusal)
                unusable.append(
                    Closure(job.job_id, reservation.record or "", refusal.code, refusal.message)
                )
                settled[job.job_id] = Refused(job.job_id, refusal, recorded=False)
        waiting = redraw
    if waiting:
        raise Retryable("could not draw an unused serial after several tries")
    if unusable:
        store.close_records(unusable)  # kept under the job id: a redelivery gets the same answer
    return [settled[job.job_id] for job in built]


def _settle(
    reservation: Reservation, job: Built, authority: SigningAuthority, store_prefix: str
) -> Reserved | Answered | Refused:
    """What `reserve` found for one job: reserved now, or the state an earlier delivery left.

    Raise Rejected when an earlier delivery's record is not one to sign (no valid MAC, or its
    profile changed since).
    """
    job_id = job.job_id
    if reservation.state == "reserved":
        return Reserved(job.record, job.applicant, job.tbs)
    if reservation.fingerprint != job.record.fingerprint:
        return _job_id_reused(job_id)
    if reservation.state == "issued":
        return Answered(
            JobResult(
                job_id=job_id,
                status="issued",
                serial=reservation.serial,
                certificate_pem=reservation.certificate_pem,
            )
        )
    if reservation.state in ("refused", "failed"):
        return Answered(
            JobResult(
                job_id=job_id,
                status="refused" if reservation.state == "refused" else "failed",
                code=reservation.code or "",
                message=reservation.message or "",
            )
        )
    # Reserved by an earlier delivery that never published: sign that record, byte for byte,
    # once it is known to be a signer's record of this very request under the CA's profile.
    stored = StoredRecord.opened(reservation.record, job_id, authority.record_key, store_prefix)
    if stored.fingerprint != job.record.fingerprint:
        return _job_id_reused(job_id)  # another request's record, its fingerprint field changed
    profile = job.record.profile
    record = stored.with_profile(profile, authority.profile_digest(profile))
    return Reserved(record, job.applicant, tbs_of(record, job.applicant, authority))


def _job_id_reused(job_id: str) -> Refused:
    refusal = Rejected(
        RefusalCode.JOB_ID_REUSED, f"job id {job_id!r} was already used for a different request"
    )
    return Refused(job_id, refusal, recorded=False)


# -- 7. sign -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signed:
    """A reserved record and the certificate the CA key signed for it (not yet checked)."""

    record: IssuanceRecord
    applicant: Applicant
    certificate: x509.Certificate

    @property
    def job_id(self) -> str:
        return self.record.job_id


def sign(job: Reserved, authority: SigningAuthority) -> Signed:
    """Step 7: the key backend signs the TBS (an HSM or token outage raises Retryable)."""
    certificate = job.tbs.sign(authority.key, digest_algorithm(job.record.profile.digest))
    return Signed(job.record, job.applicant, certificate)


# -- 8. verify ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verified:
    """A certificate that chains to the intermediate and is exactly what its record says."""

    record: IssuanceRecord
    applicant: Applicant
    certificate: x509.Certificate


def verify(job: Signed, authority: SigningAuthority, now: datetime) -> Verified:
    """Step 8: check the signature, the record's fields, a notBefore not in the future (a clock
    gone wrong) and CA:FALSE; raise IssuanceFault."""
    certificate, record = job.certificate, job.record
    tbs = certificate.tbs_certificate_bytes
    try:
        authority.issuer_key.check(certificate, tbs)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise IssuanceFault(
            f"job {record.job_id}: the issued certificate does not verify against the "
            f"intermediate ({type(exc).__name__})"
        ) from exc
    if (
        certificate.serial_number != record.serial
        or certificate.not_valid_before_utc != record.not_before
        or certificate.not_valid_after_utc != record.not_after
        or record.not_before > now + _CLOCK_TOLERANCE
        # The exact DER of the subject's key must be what was signed (cheaper than parsing).
        or job.applicant.public_key_der not in tbs
    ):
        raise IssuanceFault(f"job {record.job_id}: the signed certificate differs from its record")
    if tbs.count(_BASIC_CONSTRAINTS_OID) != 1 or not any(
        encoding in tbs for encoding in _BASIC_CONSTRAINTS_END_ENTITY
    ):
        raise IssuanceFault(f"job {record.job_id}: refusing to hand out a CA certificate")
    return Verified(record, job.applicant, certificate)


# -- 9. publish --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decided:
    """What a batch decided besides its certificates: replies, refusals kept, audit lines."""

    replies: Sequence[JobResult] = ()
    refusals: Sequence[Refusal] = ()
    audit: Sequence[str] = ()


def publish(
    verified: Sequence[Verified],
    decided: Decided,
    store: ResultsStore,
    reply_to: str | None,
    now: datetime,
) -> list[Issued]:
    """Step 9: certificates, index lines, replies, refusals and audit lines in one atomic call."""
    issued = [_published_form(job, now) for job in verified]
    store.publish(issued, decided.refusals, decided.replies, reply_to, decided.audit)
    return issued


def _published_form(job: Verified, now: datetime) -> Issued:
    record = job.record
    return Issued(
        record.job_id,
        record.fingerprint,
        record.serial_hex,
        job.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        index_line(record, job.applicant),
        audit_line(
            "issued",
            job_id=record.job_id,
            requester=record.requester,
            serial=record.serial_hex,
            profile=record.profile.name,
            when=now,
        ),
        owner=record.requester,
    )


def index_line(record: IssuanceRecord, applicant: Applicant) -> str:
    """The job's `index.txt` line, from what the certificate was built of."""
    return IndexEntry(
        status=Status.VALID,
        expires=record.not_after,
        serial=record.serial,
        subject=openssl_oneline(applicant.subject),
    ).to_openssl_line()
