"""Crash recovery: sign and publish the records a worker reserved but never published."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from core.errors import Retryable
from core.messages import JobResult
from store.results import ResultsStore
from worker.authority import SigningAuthority
from worker.issuance.failures import FailedJob, close_failed
from worker.issuance.record import IssuanceRecord
from worker.issuance.steps import Decided, Reserved, publish, sign, verify

log = logging.getLogger("casign.issuance")


def recover_pending_records(authority: SigningAuthority, store: ResultsStore) -> list[JobResult]:
    """Steps 7, 8 and 9 for every pending record, exactly as stored, each published alone;
    returns the certificates issued.

    A record that fails to sign or verify is closed as `failed` and answered so (and logged); a
    Retryable (store or HSM unavailable) stops the recovery, which the next start takes up.
    """
    recovered: list[JobResult] = []
    for _, text in store.pending_records():
        now = datetime.now(UTC)
        record = IssuanceRecord.from_json(text)
        try:
            verified = verify(sign(Reserved.stored(record, authority), authority), authority, now)
        except Retryable:
            raise
        except Exception as exc:
            log.exception("recovery of job %s failed", record.job_id)
            replies, audit = close_failed([FailedJob.of_record(record, exc)], store, now)
            publish([], Decided(replies=replies, audit=audit), store, record.reply_to, now)
            continue
        (issued,) = publish([verified], Decided(), store, record.reply_to, now)
        recovered.append(
            JobResult(
                job_id=issued.job_id,
                status="issued",
                serial=issued.serial,
                certificate_pem=issued.certificate_pem,
            )
        )
    return recovered
