"""Crash recovery: sign and publish the records a worker reserved but never published.

A pending record is signed only after three checks, since anyone who can write to the store
could have put it there: the signers' MAC over it verifies (else `store.record_invalid`), its
profile is the CA's own of that name and hash (else `store.profile_changed`), and its request
passes admission again (`admit`: the CSR policy, proof of possession, the profile's rules, and
the rights the producer it names has in producers.toml now; a producer since removed is refused
`auth.unknown_producer`). A record refused so is closed in the store as `refused` with that code
(never tried again, kept for later deliveries of the job), audited once and logged; a refused
genuine record is answered on its reply list, a forged one on none (its reply list is the
forger's word).

Only a record whose holder's lease is gone is taken (`store.leases`): a worker that starts, or
looks again every lease period, while another signs a long batch leaves that batch's records
to it. A record is taken over in the store before it is signed, so two recoveries never sign
the same one.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime

from core.audit import audit_line
from core.errors import RefusalCode, Rejected, Retryable
from core.messages import JobResult, SignRequest
from store.results import UNLEASED, Closure, ResultsStore
from worker.access import AccessPolicy
from worker.authority import SigningAuthority
from worker.issuance.failures import FailedJob, close_failed
from worker.issuance.record import IssuanceRecord, StoredRecord
from worker.issuance.steps import (
    Authenticated,
    Decided,
    Received,
    Reserved,
    admit,
    publish,
    sign,
    verify,
)
from worker.lease import WorkerLease
from worker.policy import san_text

log = logging.getLogger("casign.issuance")

_DAY_SECONDS = 86400
# Records taken over per store call.
CLAIM_JOBS = 200


def recover_pending_records(
    authority: SigningAuthority,
    store: ResultsStore,
    access: AccessPolicy | None,
    lease: WorkerLease | None = None,
) -> list[JobResult]:
    """Steps 7, 8 and 9 for every pending record whose holder's lease is gone (or that has no
    holder) that the checks above admit, exactly as stored, each published alone; returns the
    certificates issued.

    Each record is first taken over under `lease` (this process's; None: held by no one), so
    no other recovery signs it meanwhile; a record held under a live lease, this process's own
    included, is left to its holder. `access` is the signer's producers.toml (None: an open
    signer, whose records name no producer to hold to). A record that fails to sign or verify
    is closed as `failed` and answered so (and logged); a Retryable (store or HSM unavailable,
    or this process's lease lapsed) stops the recovery, which the next round takes up.
    """
    recovered: list[JobResult] = []
    terms = lease.terms if lease is not None else UNLEASED
    seen: set[str] = set()
    while True:
        claimed = [
            (j, t) for j, t in store.leases.claim_expired(terms, CLAIM_JOBS) if j not in seen
        ]
        if not claimed:
            return recovered
        seen.update(job_id for job_id, _ in claimed)
        if lease is not None:  # not one a batch of this process is signing
            taken = lease.take(job_id for job_id, _ in claimed)
            claimed = [(job_id, text) for job_id, text in claimed if job_id in taken]
        try:
            for n, (job_id, text) in enumerate(claimed):
                if lease is not None and not lease.held():
                    store.leases.release(lease.holder, [left for left, _ in claimed[n:]])
                    raise Retryable("this worker's lease lapsed during recovery; the rest waits")
                issued = _recover_one(job_id, text, authority, store, access)
                if issued is not None:
                    recovered.append(issued)
        finally:
            if lease is not None:
                lease.drop(job_id for job_id, _ in claimed)


def _recover_one(
    job_id: str,
    text: str,
    authority: SigningAuthority,
    store: ResultsStore,
    access: AccessPolicy | None,
) -> JobResult | None:
    """Sign, verify and publish one record taken over, or close it; the issued result."""
    now = datetime.now(UTC)
    try:
        stored = StoredRecord.opened(text, job_id, authority.record_key, store.prefix)
    except Rejected as refusal:
        _refuse_forged(job_id, text, refusal, store, now)
        return None
    try:
        record = readmitted(stored, authority, access, now)
    except Rejected as refusal:
        _refuse_genuine(stored, text, refusal, store, now)
        return None
    try:
        verified = verify(sign(Reserved.stored(record, authority), authority), authority, now)
    except Retryable:
        raise
    except Exception as exc:
        log.exception("recovery of job %s failed", record.job_id)
        replies, audit = close_failed([FailedJob.of_record(record, exc)], store, now)
        publish([], Decided(replies=replies, audit=audit), store, record.reply_to, now)
        return None
    (issued,) = publish([verified], Decided(), store, record.reply_to, now)
    return JobResult(
        job_id=issued.job_id,
        status="issued",
        serial=issued.serial,
        certificate_pem=issued.certificate_pem,
    )


def readmitted(
    stored: StoredRecord, authority: SigningAuthority, access: AccessPolicy | None, now: datetime
) -> IssuanceRecord:
    """The record under the CA's own profile, once its request passes admission again as the
    producer it names; raise Rejected with the code admission gives."""
    profile = authority.profiles.get(stored.profile_name)
    digest = authority.profile_digest(profile) if profile is not None else None
    record = stored.with_profile(profile, digest)
    producer = None
    if access is not None:
        producer = access.producers.get(record.requester or "")
        if producer is None:
            raise Rejected(
                RefusalCode.AUTH_UNKNOWN_PRODUCER,
                f"producer {record.requester!r}, for whom job {record.job_id!r} was reserved, "
                "is not listed in producers.toml now",
            )
    # The message was checked against its schema when it came; the policy and the rights are
    # what may have changed since, so they run on exactly what the certificate would hold.
    request = SignRequest.model_construct(
        job_id=record.job_id,
        csr_pem=record.csr_pem,
        profile=record.profile.name,
        days=math.ceil((record.not_after - record.not_before).total_seconds() / _DAY_SECONDS),
        san=[san_text(name) for name in record.subject_alternative_names],
        requester=record.requester,
    )
    batch = Authenticated((), record.reply_to, producer, now)
    admit(Received(request, record.fingerprint), batch, authority.profiles, authority.common_names)
    return record


def _refuse_forged(
    job_id: str, text: str, refusal: Rejected, store: ResultsStore, now: datetime
) -> None:
    """Close a record without the signers' MAC: one audit line, one log line, no reply."""
    if not store.close_records([Closure(job_id, text, refusal.code, refusal.message)])[0]:
        return  # changed meanwhile: the next recovery looks at it again
    log.error("recovery refused job %s, not signed: %s", job_id, refusal)
    line = audit_line("refused", job_id=job_id, reason=refusal.code, when=now)
    publish([], Decided(audit=[line]), store, None, now)


def _refuse_genuine(
    stored: StoredRecord, text: str, refusal: Rejected, store: ResultsStore, now: datetime
) -> None:
    """Close a signer's record that admission now refuses, and answer its producer so."""
    job_id = stored.job_id
    if not store.close_records([Closure(job_id, text, refusal.code, refusal.message)])[0]:
        return  # another delivery published or closed it meanwhile
    log.warning("recovery refused job %s, not signed: %s", job_id, refusal)
    reply = JobResult(
        job_id=job_id,
        status="refused",
        code=refusal.code,
        message=refusal.message,
        fingerprint=stored.fingerprint,
    )
    line = audit_line(
        "refused",
        job_id=job_id,
        requester=stored.requester,
        profile=stored.profile_name,
        reason=refusal.code,
        when=now,
    )
    publish([], Decided(replies=[reply], audit=[line]), store, stored.reply_to, now)
