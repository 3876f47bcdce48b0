"""The `casign.sign_batch` task: sign one queue message's jobs, waiting out outages in place."""

from __future__ import annotations

import logging

from pydantic import ValidationError

from core.errors import Retryable
from core.messages import SignBatch, describe_validation_error
from core.queue import SIGN_BATCH_TASK
from worker.app import app, signer_process
from worker.process import SignerProcess

log = logging.getLogger("casign.worker")


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
    return process.wait_out_outages(
        lambda: _sign_parsed(process, parsed), f"batch of {len(parsed.jobs)} job(s)"
    )


def _sign_parsed(process: SignerProcess, parsed: SignBatch) -> int:
    """Sign a validated batch; Retryable when the key or the store is unavailable now."""
    batch_signer = process.task_signer()
    try:
        results = batch_signer.sign_batch(parsed.jobs, parsed.reply_to, parsed.envelope)
    except Retryable:
        raise
    except Exception as exc:
        log.exception("batch of %d job(s) failed", len(parsed.jobs))
        batch_signer.report_failure(parsed.jobs, parsed.reply_to, exc)
        return 0
    return len(results)
