"""The `casign.sign_batch` task: sign one queue message's jobs, waiting out outages in place."""

from __future__ import annotations

import logging

from pydantic import ValidationError

from core.errors import Retryable, SigningError
from core.messages import SignBatch, describe_validation_error
from core.queue import SIGN_BATCH_TASK, visibility_timeout
from worker.app import app, signer_process
from worker.process import SignerProcess

log = logging.getLogger("casign.worker")

# A job marked in a worker's hands whose task never ended (its process died) is forgotten after
# this many visibility timeouts: by then the broker has handed its message out again.
IN_HAND_FORGET_FACTOR = 2


@app.task(name=SIGN_BATCH_TASK, acks_late=True)
def sign_batch(batch: object) -> int:
    """Sign one queue message's jobs; a malformed message is logged and dropped.

    A store or HSM outage is waited out here, with the message unacknowledged, rather than by
    Celery's retry, which has to publish a new message and so fails when the broker is the
    Redis that is down; if this worker dies meanwhile the message is delivered again, and if
    it is asked to stop the message goes back to the queue.
    """
    try:
        parsed = SignBatch.model_validate(batch)
    except ValidationError as exc:
        log.error("refused a malformed batch message: %s", describe_validation_error(exc))
        return 0
    process = signer_process()
    job_ids = [job["job_id"] for job in parsed.jobs if isinstance(job.get("job_id"), str)]
    try:
        return process.wait_out_outages(
            lambda: _sign_parsed(process, parsed, job_ids), f"batch of {len(parsed.jobs)} job(s)"
        )
    finally:
        _out_of_hand(process, job_ids)


def _sign_parsed(process: SignerProcess, parsed: SignBatch, job_ids: list[str]) -> int:
    """Sign a validated batch; Retryable when the key or the store is unavailable now.

    Its jobs are first marked in this process's hands (`P:inhand`), so a producer that finds
    no record of them yet knows they are neither lost nor waiting in a queue.
    """
    batch_signer = process.task_signer()
    batch_signer.store.jobs.note_in_hand(job_ids, IN_HAND_FORGET_FACTOR * visibility_timeout())
    try:
        results = batch_signer.sign_batch(parsed.jobs, parsed.reply_to, parsed.envelope)
    except Retryable:
        raise
    except Exception as exc:
        log.exception("batch of %d job(s) failed", len(parsed.jobs))
        batch_signer.report_failure(parsed.jobs, parsed.reply_to, exc)
        return 0
    return len(results)


def _out_of_hand(process: SignerProcess, job_ids: list[str]) -> None:
    """The task ends: its jobs are in records or answered (a mark left by a store outage is
    forgotten after IN_HAND_FORGET_FACTOR visibility timeouts)."""
    try:
        process.signer().store.jobs.drop_in_hand(job_ids)
    except SigningError as exc:
        log.warning("could not clear %d job(s) in hand: %s", len(job_ids), exc)
