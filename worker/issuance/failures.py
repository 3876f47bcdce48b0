"""Jobs that failed inside the signer: closed in the store as `failed` before anyone is told.

A failed job's reservation is marked `failed` (out of the pending set, its record dropped, its
serial kept so it is never drawn again) and only then is the producer answered `failed`
(`internal.error`); recovery never signs it, and a later delivery of the job gets the same
`failed` answer. A job another delivery published meanwhile is answered with what it holds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from core.audit import audit_line
from core.messages import JobResult
from store.results import Failure, ResultsStore
from worker.issuance.record import IssuanceRecord

log = logging.getLogger("casign.issuance")

FAILED_CODE = "internal.error"


@dataclass(frozen=True, slots=True)
class FailedJob:
    """A job the signer could not finish: what its answer and its audit line say."""

    job_id: str
    fingerprint: str | None  # None: the message was malformed, nothing is recorded for it
    message: str
    serial: str | None = None
    requester: str | None = None
    profile: str | None = None

    @classmethod
    def of_record(cls, record: IssuanceRecord, error: Exception) -> FailedJob:
        return cls(
            record.job_id,
            record.fingerprint,
            failure_message(error),
            record.serial_hex,
            record.requester,
            record.profile.name,
        )


def failure_message(error: Exception) -> str:
    """The sentence a producer reads; key backends never put a PIN or secret in an error."""
    return f"the signer failed: {type(error).__name__}: {error}"


def close_failed(
    failed: Sequence[FailedJob], store: ResultsStore, now: datetime
) -> tuple[list[JobResult], list[str]]:
    """Mark each job `failed` in the store, then (replies, audit lines) to publish for them."""
    if not failed:
        return [], []
    recorded = [job for job in failed if job.fingerprint is not None]
    closed = store.mark_failed(
        Failure(job.job_id, job.fingerprint or "", FAILED_CODE, job.message) for job in recorded
    )
    left_open = [job for job, done in zip(recorded, closed, strict=True) if not done]
    answered_elsewhere = (
        store.job_results(
            [job.job_id for job in left_open],
            {job.job_id: job.fingerprint or "" for job in left_open},
        )
        if left_open
        else {}
    )
    replies: list[JobResult] = []
    audit: list[str] = []
    for job in failed:
        found = answered_elsewhere.get(job.job_id)
        if found is not None:
            replies.append(found)
            continue
        log.error("job %s failed: %s", job.job_id, job.message)
        replies.append(
            JobResult(
                job_id=job.job_id,
                status="failed",
                code=FAILED_CODE,
                message=job.message,
                fingerprint=job.fingerprint,
            )
        )
        audit.append(
            audit_line(
                "failed",
                job_id=job.job_id,
                requester=job.requester,
                serial=job.serial,
                profile=job.profile,
                reason=FAILED_CODE,
                when=now,
            )
        )
    return replies, audit
