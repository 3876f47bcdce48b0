"""`BatchSigner`: runs the issuance steps over one batch and keeps what each job came to."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from cryptography import x509

from core.audit import audit_line
from core.errors import RefusalCode, Rejected, Retryable
from core.messages import Envelope, JobResult, parse_sign_request
from core.queue import MAX_BATCH_BYTES, MAX_BATCH_JOBS, batch_bytes, visibility_timeout
from store.envelopes import EnvelopeLedger
from store.results import UNLEASED, LeaseTerms, Refusal, ResultsStore
from worker.access import AccessPolicy, notes_refusal
from worker.authority import SigningAuthority
from worker.figures import (
    BATCH_BUCKETS,
    BATCH_JOBS,
    FAILED,
    SignerFigures,
    StepClock,
    backend_name,
)
from worker.issuance.failures import FailedJob, close_failed, failure_message
from worker.issuance.pace import SigningPace
from worker.issuance.record import Applicant, IssuanceRecord
from worker.issuance.recovery import recover_pending_records
from worker.issuance.steps import (
    Admitted,
    Answered,
    Authenticated,
    Built,
    Decided,
    Left,
    Received,
    Refused,
    Reserved,
    Verified,
    admit,
    authenticate,
    build_tbs,
    fix_record,
    lint,
    publish,
    receive,
    reserve,
    sign,
    tbs_of,
    verify,
    within_rate,
)
from worker.lease import WorkerLease
from worker.lint import prepare as prepare_linters
from worker.profiles import Profile, ProfileSet
from worker.retention import SECONDS_PER_DAY

log = logging.getLogger("casign.issuance")


class _Job(Protocol):
    @property
    def job_id(self) -> str: ...


class _Recorded(Protocol):
    @property
    def record(self) -> IssuanceRecord: ...


In = TypeVar("In", bound=_Job)
Out = TypeVar("Out")
Held = TypeVar("Held", bound=_Recorded)


class BatchSigner:
    """Signs batches of jobs for one authority, publishing each chunk in one round trip.

    With a `lease` (a worker process's), every job it reserves is held under it, a job held
    under another live process's lease is left to that process, and no signature is begun once
    the lease may have lapsed. Without one (tests, `casign recover`) its reservations are held
    by no one, so any recovery may take them.
    """

    def __init__(
        self,
        authority: SigningAuthority,
        store: ResultsStore,
        access: AccessPolicy | None = None,
        lease: WorkerLease | None = None,
        pace: SigningPace | None = None,
    ) -> None:
        self.authority = authority
        self.store = store
        # Job records this signer closes expire after the CA's job_retention_days (casign.toml).
        store.jobs.retention_seconds = authority.job_retention_days * SECONDS_PER_DAY
        self.access = access
        self.lease = lease
        self.pace = pace or SigningPace(visibility_timeout())
        self.ledger = EnvelopeLedger(store)
        self.figures = SignerFigures(store.metrics, backend_name(authority.key))
        # The throwaway key and pkilint's validators, once per process, before the first job.
        prepare_linters([profile.lint for profile in authority.profiles], authority.key)

    @property
    def profiles(self) -> ProfileSet:
        return self.authority.profiles

    def reconfigure(self, access: AccessPolicy | None, profiles: ProfileSet) -> None:
        """Serve the producers of `access` (None: open) under `profiles` from the next batch."""
        if profiles is not self.authority.profiles:
            prepare_linters([profile.lint for profile in profiles], self.authority.key)
            self.authority = dataclasses.replace(self.authority, profiles=profiles)
        self.access = access

    def sign_batch(
        self,
        raw_jobs: Iterable[object],
        reply_to: str | None = None,
        envelope: Envelope | None = None,
        *,
        judged_at: datetime | None = None,
        remember_envelope: bool = True,
    ) -> list[JobResult]:
        """Sign, verify and publish every acceptable job; refuse the rest with a code.

        An air-gapped signer (worker.airgap) judges the envelope at `judged_at`, when the relay
        exported the batch, and marks the envelope done itself, with the batch's answers
        (`remember_envelope=False`).
        """
        jobs = list(raw_jobs)
        now = datetime.now(UTC)
        try:
            batch = authenticate(
                jobs, reply_to, envelope, self.access, self.ledger, now, judged_at
            )  # 1
        except Rejected as refusal:
            return self._refuse_whole_batch(jobs, reply_to, envelope, refusal)
        over = over_ceiling(jobs)
        if over is not None:
            return self._answer_over_ceiling(batch, over)
        self.pace.warn_if_long(len(jobs))
        results: list[JobResult] = []
        done = 0
        while done < len(jobs):  # in chunks that each finish well inside the visibility timeout
            chunk = batch.jobs[done : done + self.pace.chunk_jobs()]
            began = time.monotonic()
            moment = batch.now if done == 0 else datetime.now(UTC)
            results += self._issue(replace(batch, jobs=chunk, now=moment), self.authority.profiles)
            self.pace.note(len(chunk), time.monotonic() - began)
            done += len(chunk)
        if remember_envelope and batch.producer is not None and batch.envelope is not None:
            self.ledger.remember(
                batch.producer.name, batch.envelope.nonce, batch.envelope.expires_at
            )
        return results

    def sign_builtin(self, job: dict[str, object], profile: Profile, now: datetime) -> JobResult:
        """Steps 2-9 for a job the signer makes itself (the OCSP delegate's certificate), under
        a built-in profile that no producer may ask for."""
        (result,) = self._issue(
            Authenticated((job,), None, None, now), ProfileSet({profile.name: profile})
        )
        return result

    def _issue(self, batch: Authenticated, profiles: ProfileSet) -> list[JobResult]:
        """Steps 2 to 9; every job ends issued, refused, answered as before, or failed."""
        authority, store, jobs = self.authority, self.store, _BatchJobs(batch)
        names, clock = authority.common_names, StepClock()
        received = jobs.receive(batch.jobs)
        admitted = jobs.refusing(received, lambda job: admit(job, batch, profiles, names))  # 2
        admitted = jobs.within_rate(admitted, self.access, store)  # 2
        clock.lap("admit")
        fixed = jobs.refusing(admitted, lambda job: fix_record(job, authority, batch))  # 3
        built = jobs.refusing(fixed, lambda job: build_tbs(job, authority))  # 4
        clock.lap("build")
        linted = jobs.refusing(built, lambda job: lint(job, authority))  # 5
        clock.lap("lint")
        authority.check_own_chain(batch.now)
        reserved = jobs.settle(self._reserve(linted))  # 6
        clock.lap("reserve")
        try:
            signed = jobs.failing(reserved, lambda job: sign(job, authority), self.lease)  # 7
            clock.lap("sign")
            verified = jobs.failing(signed, lambda job: verify(job, authority, batch.now))  # 8
            clock.lap("verify")
            jobs.publish(verified, store)  # 9
            clock.lap("publish")
            self._count(jobs, verified, clock)
        finally:
            if self.lease is not None:
                self.lease.drop(job.job_id for job in reserved)
        if jobs.unsigned and self.lease is not None:
            # Published what was signed; the rest goes to whoever holds a lease next (this
            # process, when its task tries the batch again, or another's recovery).
            store.leases.release(self.lease.holder, jobs.unsigned)
            raise Retryable(
                f"this worker's lease lapsed (store unreachable?) before {len(jobs.unsigned)} "
                "reserved job(s) were signed; they are left unsigned for a holder of a lease"
            )
        return jobs.results()

    def _count(self, jobs: _BatchJobs, verified: Sequence[Verified], clock: StepClock) -> None:
        figures = self.figures
        figures.issued(job.record.profile.name for job in verified)
        figures.refused(jobs.refused_codes)
        if jobs.failed:
            figures.count(FAILED, len(jobs.failed))
        figures.observe(BATCH_JOBS, len(jobs.order), BATCH_BUCKETS)
        figures.steps(clock, len(jobs.order))
        figures.keep_written()

    def _reserve(self, linted: Sequence[Built]) -> list[Reserved | Answered | Refused | Left]:
        """Step 6 under this signer's lease; the reservation renews the lease too."""
        sent = time.monotonic()
        outcomes = reserve(linted, self.store, self.authority, self.lease_terms)
        if self.lease is None:
            return outcomes
        self.lease.renewed(sent)
        held = {o.job_id for o in outcomes if isinstance(o, Left)}
        if held and self.lease.end_gone_neighbours():
            # Held by a process of this host that died (its batch comes straight back): take
            # those jobs now rather than after its lease.
            retry = [job for job in linted if job.job_id in held]
            again = {
                o.job_id: o for o in reserve(retry, self.store, self.authority, self.lease_terms)
            }
            outcomes = [again.get(o.job_id, o) for o in outcomes]
        # A job this process holds already may be in another of its threads' hands (the
        # recovery's, or another batch's): left to that thread.
        taken = self.lease.take(o.job_id for o in outcomes if isinstance(o, Reserved))
        return [
            Left(o.job_id) if isinstance(o, Reserved) and o.job_id not in taken else o
            for o in outcomes
        ]

    @property
    def lease_terms(self) -> LeaseTerms:
        return self.lease.terms if self.lease is not None else UNLEASED

    def _answer_over_ceiling(self, batch: Authenticated, refusal: Rejected) -> list[JobResult]:
        """Refuse every job of a message over the ceilings, signing none: each is answered on
        the reply list, nothing is recorded under its id (the same job sent again in a batch
        under the ceilings is signed), and the audit log gets one line."""
        log.warning("refused a batch of %d job(s): %s", len(batch.jobs), refusal)
        answers: dict[str, JobResult] = {}
        for raw in batch.jobs:
            job_id = raw.get("job_id") if isinstance(raw, dict) else None
            if isinstance(job_id, str) and 0 < len(job_id) <= 128 and job_id not in answers:
                answers[job_id] = _refused(job_id, refusal)
        claimed = batch.producer.name if batch.producer is not None else None
        line = audit_line(
            "refused", reason=refusal.code, jobs=len(batch.jobs), requester=claimed, when=batch.now
        )
        self.store.publish([], [], list(answers.values()), batch.reply_to, [line])
        self.figures.refused([refusal.code] * len(answers))
        self.figures.keep_written()
        if batch.producer is not None and batch.envelope is not None:
            self.ledger.remember(
                batch.producer.name, batch.envelope.nonce, batch.envelope.expires_at
            )
        return list(answers.values())

    def _refuse_whole_batch(
        self,
        jobs: list[object],
        reply_to: str | None,
        envelope: Envelope | None,
        refusal: Rejected,
    ) -> list[JobResult]:
        """A batch that fails authentication costs one audit line and one short note.

        Nothing is written under its job ids and nothing is pushed to its reply list: whoever
        forged it could otherwise fill any reply list or the audit log. The producer that is
        really waiting on `reply_to` reads the note (`Producer.results`) and reports the code.
        """
        claimed = envelope.producer if envelope is not None else None
        log.warning("refused a batch of %d job(s) from %s: %s", len(jobs), claimed, refusal)
        self.figures.refused([refusal.code] * len(jobs))
        self.figures.keep_written()
        self.store.publish(
            [],
            [],
            [],
            None,
            [audit_line("refused", reason=refusal.code, jobs=len(jobs), claimed_by=claimed)],
        )
        if reply_to and notes_refusal(refusal.code):
            self.ledger.note_refusal(reply_to, refusal.code, refusal.message)
        return [
            _refused(raw["job_id"], refusal)
            for raw in jobs
            if isinstance(raw, dict) and isinstance(raw.get("job_id"), str)
        ]

    def issue_record(
        self,
        record: IssuanceRecord,
        applicant: Applicant,
        now: datetime,
        tbs: x509.CertificateBuilder | None = None,
    ) -> x509.Certificate:
        """Steps 4 (unless `tbs` is given), 7 and 8 for one record; nothing is stored."""
        if tbs is None:
            tbs = tbs_of(record, applicant, self.authority)
        reserved = Reserved(record, applicant, tbs)
        return verify(sign(reserved, self.authority), self.authority, now).certificate

    def report_failure(
        self, raw_jobs: Iterable[object], reply_to: str | None, error: Exception
    ) -> None:
        """Answer a batch that failed inside the signer: each job is closed as `failed` in the
        store first (never left pending), or answered with what an earlier delivery published."""
        failed: list[FailedJob] = []
        for raw in raw_jobs:
            if not isinstance(raw, dict) or not isinstance(raw.get("job_id"), str):
                continue
            try:
                fingerprint: str | None = parse_sign_request(raw).fingerprint()
            except ValueError:
                fingerprint = None
            failed.append(FailedJob(raw["job_id"], fingerprint, failure_message(error)))
        now = datetime.now(UTC)
        replies, audit = close_failed(failed, self.store, now)
        self.store.publish([], [], replies, reply_to, audit)

    def recover_pending(self) -> list[JobResult]:
        """Sign and publish every job that was reserved but never published (after a crash),
        once its record proves a signer's and its request passes admission again."""
        return recover_pending_records(self.authority, self.store, self.access, self.lease)


def over_ceiling(jobs: Sequence[object]) -> Rejected | None:
    """The refusal for a message over the signer's ceilings (core.queue), else None."""
    if len(jobs) > MAX_BATCH_JOBS:
        return Rejected(
            RefusalCode.BATCH_TOO_MANY,
            f"the message carries {len(jobs)} jobs; a signer takes at most {MAX_BATCH_JOBS} "
            "in one message (send it again in smaller batches)",
        )
    size = batch_bytes(jobs)
    if size > MAX_BATCH_BYTES:
        return Rejected(
            RefusalCode.BATCH_TOO_LARGE,
            f"the message's jobs are {size} bytes; a signer takes at most {MAX_BATCH_BYTES} "
            "in one message (send it again in smaller batches)",
        )
    return None


def _refused(job_id: str, refusal: Rejected) -> JobResult:
    return JobResult(job_id=job_id, status="refused", code=refusal.code, message=refusal.message)


@dataclass
class _BatchJobs:
    """What each job of one batch has come to so far, in the order the jobs came."""

    batch: Authenticated
    order: list[str] = field(default_factory=list)
    received: dict[str, Received] = field(default_factory=dict)
    answers: dict[str, JobResult] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)
    audit: list[str] = field(default_factory=list)
    failed: list[FailedJob] = field(default_factory=list)
    refused_codes: list[str] = field(default_factory=list)
    left: set[str] = field(default_factory=set)  # held under another live process's lease
    unsigned: list[str] = field(default_factory=list)  # reserved here, not signed: lease lapsed

    def receive(self, raw_jobs: Iterable[object]) -> list[Received]:
        """Each job's message validated once; a malformed one refused, a twin in the batch skipped."""
        received: list[Received] = []
        for raw in raw_jobs:
            try:
                job = receive(raw)
            except ValueError as exc:
                job_id = raw.get("job_id") if isinstance(raw, dict) else None
                if not isinstance(job_id, str) or not 0 < len(job_id) <= 128:
                    log.warning("dropped a job without a usable job_id: %s", exc)
                elif job_id not in self.answers and job_id not in self.received:
                    self.order.append(job_id)
                    self.refuse(job_id, Rejected(RefusalCode.JOB_MALFORMED, str(exc)), False)
                continue
            if job.job_id in self.answers or job.job_id in self.received:
                continue  # the same job twice in one batch: one answer serves both
            self.order.append(job.job_id)
            self.received[job.job_id] = job
            received.append(job)
        return received

    def refuse(self, job_id: str, refusal: Rejected, recorded: bool) -> None:
        """Answer `job_id` with `refusal`; `recorded` keeps it under the job id for redeliveries."""
        self.answers[job_id] = _refused(job_id, refusal)
        self.refused_codes.append(refusal.code)
        job = self.received.get(job_id)
        if recorded and job is not None:
            self.refusals.append(Refusal(job_id, job.fingerprint, refusal.code, refusal.message))
        self.audit.append(
            audit_line(
                "refused",
                job_id=job_id,
                requester=self.batch.requester_of(job.request) if job else None,
                profile=job.request.profile if job else None,
                reason=refusal.code,
                when=self.batch.now,
            )
        )

    def refusing(self, jobs: Sequence[In], step: Callable[[In], Out]) -> list[Out]:
        """`step` applied to each job; a job it refuses is answered and leaves the batch."""
        kept: list[Out] = []
        for job in jobs:
            try:
                kept.append(step(job))
            except Rejected as refusal:
                self.refuse(job.job_id, refusal, recorded=True)
        return kept

    def within_rate(
        self, admitted: Sequence[Admitted], access: AccessPolicy | None, store: ResultsStore
    ) -> list[Admitted]:
        granted, over = within_rate(admitted, self.batch, access, store)
        for job in over:
            self.refuse(job.job_id, job.refusal, job.recorded)
        return granted

    def settle(self, outcomes: Sequence[Reserved | Answered | Refused | Left]) -> list[Reserved]:
        """The reserved jobs; the others take the answer or refusal the store gave them, or are
        left to the live process that holds them (it answers them when it publishes)."""
        reserved: list[Reserved] = []
        left = [outcome.job_id for outcome in outcomes if isinstance(outcome, Left)]
        if left:
            log.warning(
                "%d job(s) of this batch are being signed by another worker (held under its "
                "lease); left to it",
                len(left),
            )
            self.left.update(left)
        for outcome in outcomes:
            if isinstance(outcome, Reserved):
                reserved.append(outcome)
            elif isinstance(outcome, Left):
                continue
            elif isinstance(outcome, Answered):
                self.answers[outcome.job_id] = outcome.result
            else:
                self.refuse(outcome.job_id, outcome.refusal, outcome.recorded)
        return reserved

    def failing(
        self,
        jobs: Sequence[Held],
        step: Callable[[Held], Out],
        lease: WorkerLease | None = None,
    ) -> list[Out]:
        """`step` applied to each reserved job; one that raises fails alone (Retryable does not:
        the whole batch is tried again). With `lease`, no job is begun once the lease may have
        lapsed: those left are `unsigned`."""
        kept: list[Out] = []
        for n, job in enumerate(jobs):
            if lease is not None and not lease.held():
                self.unsigned = [held.record.job_id for held in jobs[n:]]
                self.left.update(self.unsigned)
                log.error("this worker's lease lapsed: %d job(s) left unsigned", len(jobs) - n)
                break
            try:
                kept.append(step(job))
            except Retryable:
                raise
            except Exception as exc:
                log.exception("job %s failed after its reservation", job.record.job_id)
                self.failed.append(FailedJob.of_record(job.record, exc))
        return kept

    def publish(self, verified: Sequence[Verified], store: ResultsStore) -> None:
        """Close the failed jobs, then publish certificates and every other answer together."""
        batch = self.batch
        replies, audit = close_failed(self.failed, store, batch.now)
        self.answers.update((reply.job_id, reply) for reply in replies)
        self.audit.extend(audit)
        decided = Decided(
            replies=[self._stamped(job_id) for job_id in self.order if job_id in self.answers],
            refusals=self.refusals,
            audit=self.audit,
        )
        for issued in publish(verified, decided, store, batch.reply_to, batch.now):
            self.answers[issued.job_id] = JobResult(
                job_id=issued.job_id,
                status="issued",
                serial=issued.serial,
                certificate_pem=issued.certificate_pem,
                fingerprint=issued.fingerprint,
            )

    def results(self) -> list[JobResult]:
        return [self._stamped(job_id) for job_id in self.order if job_id not in self.left]

    def _stamped(self, job_id: str) -> JobResult:
        result = self.answers[job_id]
        job = self.received.get(job_id)
        if job is None or result.fingerprint == job.fingerprint:
            return result
        return result.model_copy(update={"fingerprint": job.fingerprint})
